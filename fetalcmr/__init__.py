"""fetalcmr: joint weakly-supervised fetal cardiac vessel segmentation and aortic arch
anomaly classification (Ramirez Gilliland et al., MELBA 2023) as a reproducible compendium."""

__version__ = "0.1.0"
