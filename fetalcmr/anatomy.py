"""Label map, anomaly classes and the anatomy facts shared by every stage (DESIGN §3, §6).

Array convention for every volume in the package: channel-free arrays are indexed
``[x, y, z]`` in RAS+ orientation, i.e. index ``x`` grows towards the subject's Right,
``y`` towards Anterior and ``z`` towards Superior.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

#: Default vessel labels in the reference implementation's order (0 is background).
LABELS: Mapping[int, str] = MappingProxyType(
    {
        0: "background",
        1: "SVC",
        2: "LPA",
        3: "RPA",
        4: "AO",
        5: "AD",
        6: "DAO",
        7: "MPA",
        8: "LSA",
        9: "BCA",
        10: "LCCA",
        11: "PV",
    }
)
#: Number of segmentation outputs (background + 11 vessels).
N_LABELS: int = len(LABELS)
#: Vessel name -> label index.
LABEL_INDEX: Mapping[str, int] = MappingProxyType({v: k for k, v in LABELS.items()})

#: Anomaly classes (DESIGN §3).
CLASSES: Mapping[int, str] = MappingProxyType({0: "CoA", 1: "RAA", 2: "DAA"})
N_CLASSES: int = len(CLASSES)
CLASS_INDEX: Mapping[str, int] = MappingProxyType({v: k for k, v in CLASSES.items()})
#: Long names for figure captions.
CLASS_DESCRIPTIONS: Mapping[int, str] = MappingProxyType(
    {
        0: "suspected coarctation, left arch",
        1: "right aortic arch with aberrant left subclavian artery",
        2: "double aortic arch",
    }
)
