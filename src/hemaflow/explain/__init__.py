"""Stage `explain` (workflow/rules/explain.smk): Grad-CAM and LIME of the predicted class, and their sufficiency test."""
