"""fetalcmr: joint weakly-supervised fetal cardiac vessel segmentation and aortic arch
anomaly classification (Ramirez Gilliland et al., MELBA 2023) as a reproducible compendium."""

import sys

# monai imports jsonschema, whose optional "iri" format checker builds rfc3987-syntax's Lark grammar
# on import (1-2 s in every kernel and worker process). No fetalcmr schema uses that format, so the
# optional checker is marked absent, exactly as if the package were not installed.
sys.modules.setdefault("rfc3987_syntax", None)

__version__ = "0.1.0"
