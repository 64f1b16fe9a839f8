"""Stage `train` (workflow/rules/train.smk): the model zoo, the grid, and fitting one combination."""
