"""Group `drops`: predictions and a drift verdict for each new-product drop."""
