"""Networks: generator G, registration R (+ warp), discriminator D (arrive with issue 3)."""
