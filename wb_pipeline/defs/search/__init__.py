"""Group `search`: nearest-neighbour index, similar products, duplicate groups, duplicate report."""
