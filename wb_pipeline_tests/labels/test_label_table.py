import pandas as pd

from wb_pipeline.core.labels.table import file_labels, values_outside_vocabulary


def test_file_labels_normalise_bools_blanks_and_keep_unknown_categories():
    clean = pd.DataFrame(
        {
            "nm": ["1", "2", "3"],
            "category": ["Одежда ", "", None],
            "isadult": pd.array([True, False, None], dtype="boolean"),
        }
    )
    labels = file_labels(clean)
    assert labels["category"].tolist()[:1] == ["Одежда"] and labels["category"].isna().tolist() == [False, True, True]
    assert labels["isadult"].astype(object).tolist()[:2] == ["True", "False"] and labels["isadult"].isna().iloc[2]


def test_values_outside_vocabulary_counts_unknown_values_only():
    labels = pd.DataFrame({"nm": ["1", "2", "3"], "season": ["зима", "всесезон", "всесезон"], "free": ["x", "y", "z"]})
    outside = values_outside_vocabulary(labels)
    assert outside.to_dict("records") == [{"label": "season", "value": "всесезон", "count": 2}]
