"""Stage `pretrain` (embedded default only): contrastive pre-training of the small CLIP on the world."""
