"""Render the compare report's model as HTML and as Markdown, through Jinja2 templates.

The templates are package data, ``medi2i/evaluation/templates/compare.html.j2`` and
``compare.md.j2``, loaded by :class:`jinja2.PackageLoader` (so an installed wheel finds them too).
Rules: the HTML template is autoescaped (every string of the model is text, never markup) and
embeds every figure as a base64 ``data:`` URI; the Markdown is not escaped, except table cells
(the ``md_cell`` filter) and links its figures as ``<files_dir>/<key>.png``. A template only lays
the model out: the numbers, rankings and wording come from
:mod:`~medi2i.evaluation.compare.build`.
"""

from __future__ import annotations

from functools import cache

import jinja2

from medi2i.evaluation.compare.model import ReportModel

__all__ = ["render_html", "render_markdown"]


def _md_cell(text: str, *, bold: bool = False, italic: bool = False) -> str:
    """A Markdown table cell on one line, ``|`` escaped; ``italic`` leaves empty and ``-`` plain."""
    text = str(text)
    if bold:
        text = f"**{text}**"
    if italic and text not in ("", "-"):
        text = f"*{text}*"
    return text.replace("|", "\\|").replace("\n", " ")


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("medi2i.evaluation", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md_cell"] = _md_cell
    return env


def render_html(model: ReportModel) -> str:
    """The self-contained HTML report (inline style sheet, figures embedded)."""
    return _environment().get_template("compare.html.j2").render(model=model)


def render_markdown(model: ReportModel, files_dir: str) -> str:
    """The Markdown report; figures link to ``files_dir/<key>.png`` (relative to the report)."""
    template = _environment().get_template("compare.md.j2")
    return template.render(model=model, files_dir=files_dir).rstrip("\n") + "\n"
