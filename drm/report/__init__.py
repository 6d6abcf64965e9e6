"""Stage `report`: methods side by side, same-head comparisons and the ID-vs-OOD plot."""
