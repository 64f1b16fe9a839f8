"""Stage `augment` (workflow/rules/augment.smk): preprocess and augment each split's images into TFRecord shards."""
