"""Label map, anomaly classes and the anatomy facts shared by every stage (docs/design.md §2, §9).

Array convention for every volume in the package: channel-free arrays are indexed
``[x, y, z]`` in RAS+ orientation, i.e. index ``x`` grows towards the subject's Right,
``y`` towards Anterior and ``z`` towards Superior.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

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

#: Anomaly classes (docs/design.md §2).
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


def _pairs(*names: tuple[str, str]) -> frozenset[tuple[int, int]]:
    return frozenset(tuple(sorted((LABEL_INDEX[a], LABEL_INDEX[b]))) for a, b in names)  # type: ignore[misc]


_COMMON_CONTACTS = (("MPA", "LPA"), ("MPA", "RPA"), ("MPA", "AD"), ("AD", "DAO"), ("AO", "DAO"),
                    ("AO", "BCA"), ("AO", "LCCA"))
#: Label pairs that touch (26-connectivity) in a correct segmentation of each class: the class
#: template of the label adjacency graph. RAA differs by the aberrant LSA arising from the DAO.
EXPECTED_CONTACTS: Mapping[int, frozenset[tuple[int, int]]] = MappingProxyType(
    {
        0: _pairs(*_COMMON_CONTACTS, ("AO", "LSA")),
        1: _pairs(*_COMMON_CONTACTS, ("DAO", "LSA")),
        2: _pairs(*_COMMON_CONTACTS, ("AO", "LSA")),
    }
)
#: First Betti number (independent loops) of AO ∪ DAO: one ring for a double arch.
ARCH_LOOPS: Mapping[int, int] = MappingProxyType({0: 0, 1: 0, 2: 1})
#: Side of the trachea on which the arch passes ("both" for a double arch).
ARCH_SIDE: Mapping[int, str] = MappingProxyType({0: "left", 1: "right", 2: "both"})
