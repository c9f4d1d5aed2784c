"""Group `classification`: attribute classifiers, late fusion, the comparison report, test predictions."""
