"""What each stage's steps cost on this machine: timings on random or freshly generated inputs.

Called by :mod:`fetalcmr.bench` (``make bench``), which prints them against the issues' budgets.
Nothing here is imported by a stage module, so a change to a measurement never invalidates a cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fetalcmr.anatomy import CLASSES, LABEL_INDEX, N_LABELS
from fetalcmr.classification import INPUT_KINDS, build_classifier
from fetalcmr.joint import build_joint
from fetalcmr.methods import METHODS
from fetalcmr.models import make_segmenter
from fetalcmr.review import ReviewCase, review_order, review_table
from fetalcmr.review_report import correct_rates, mcnemar_table


def _time(fn: Any, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def segmentation_costs(threads: int = 2, repeat: int = 3) -> dict[str, float]:
    """Return measured segmenter costs on ``threads`` CPU threads (random inputs, seconds).

    Inference per subject at the default grid with the default channels and with the reference
    architecture (32–512 at 80³), in the same run; the default training step per sample (patch
    or whole grid, forward + backward + AdamW step) and its throughput; the default profile's
    estimated training time of the three networks.
    """
    from fetalcmr.config import get_profile
    from fetalcmr.losses import SegmentationLoss

    torch.set_num_threads(threads)
    prof = get_profile("default")
    cfg, grid = prof.segmenter, prof.cohort.grid
    out: dict[str, float] = {"threads": float(threads)}
    with torch.no_grad():
        net = make_segmenter(cfg).eval()
        x = torch.rand(1, 1, grid, grid, grid)
        out[f"inference_s_per_subject_default_{grid}"] = _time(lambda: net(x), repeat)
        ref = make_segmenter(get_profile("paper").segmenter).eval()
        x80 = torch.rand(1, 1, 80, 80, 80)
        out["inference_s_per_subject_reference_80"] = _time(lambda: ref(x80), max(1, repeat - 1))
    side = cfg.patch or grid
    net = make_segmenter(cfg).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    loss = SegmentationLoss("lp+binary")
    bs = cfg.batch_size
    xb = torch.rand(bs, 1, side, side, side)
    lp = torch.randint(0, 12, (bs, side, side, side))

    def step() -> None:
        opt.zero_grad()
        total, _ = loss(net(xb), lp=lp, binary=(lp > 0).long(), epoch=0)
        total.backward()
        opt.step()

    per_sample = _time(step, repeat) / bs
    out[f"train_s_per_sample_{side}"] = per_sample
    out["train_samples_per_s"] = 1.0 / per_sample
    n_train = prof.cohort.n_training()
    out["estimated_train_s_three_networks"] = 3 * cfg.epochs * n_train * per_sample
    return out


def _time_steps(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, steps: int) -> tuple[float, float]:
    """Return (training s/sample, inference s/sample) of ``model`` on the batch ``x``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    loss = F.cross_entropy(model(x), labels)  # warm-up step (allocations)
    loss.backward()
    opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        opt.step()
    train_s = (time.perf_counter() - t0) / (steps * x.shape[0])
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
    return train_s, (time.perf_counter() - t0) / (steps * x.shape[0])


def classification_costs(profile: str = "default", *, steps: int = 2, batch_size: int | None = None,
              source_grid: int | None = None,
              kinds: Sequence[str] = INPUT_KINDS, timer: Callable[..., tuple[float, float]] | None = None
              ) -> dict[str, Any]:
    """Return measured classifier costs of ``profile`` per input type (random inputs, this machine).

    Keys: ``profile``, ``arch``, ``grid`` (classifier input grid), ``threads`` and, per input
    type, ``train_s_per_sample`` and ``infer_s_per_sample`` (forward+backward / forward, from
    the cohort grid, pooling included), plus ``train_s_per_epoch`` for the profile's training set.
    """
    from fetalcmr.config import get_profile

    prof = get_profile(profile)
    cfg = prof.classifier
    grid = source_grid or prof.cohort.grid
    bs = batch_size or cfg.batch_size
    timer = timer or _time_steps
    n_train = prof.cohort.n_training()
    side = cfg.grid or cfg.crop or grid  # samples are cached pooled to the grid or cropped
    out: dict[str, Any] = {"profile": profile, "arch": cfg.arch, "grid": side,
                           "source_grid": grid, "threads": torch.get_num_threads(), "batch_size": bs}
    for kind in kinds:
        torch.manual_seed(0)
        model = build_classifier(cfg, kind)
        x = torch.rand(bs, N_LABELS + 1, *(side,) * 3)
        labels = torch.arange(bs) % len(CLASSES)
        train_s, infer_s = timer(model, x, labels, steps)
        out[kind] = {"train_s_per_sample": train_s, "infer_s_per_sample": infer_s,
                     "train_s_per_epoch": train_s * n_train}
    return out


def joint_costs(profile: str = "default", *, steps: int = 2) -> dict[str, Any]:
    """Return the measured joint training step and inference seconds per subject for ``profile``."""
    from fetalcmr.config import get_profile

    prof = get_profile(profile)
    torch.manual_seed(0)
    model = build_joint(prof.segmenter, prof.classifier)
    g = prof.cohort.grid
    bs = prof.joint.batch_size
    x = torch.rand(bs, 1, g, g, g)
    labels = torch.arange(bs) % len(CLASSES)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad()
        seg_logits, logits = model(x)
        (seg_logits.float().mean() + torch.nn.functional.cross_entropy(logits, labels)).backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    train_s = (time.perf_counter() - t0) / (steps * bs)
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x[:1])
    infer_s = (time.perf_counter() - t0) / steps
    n_train = prof.cohort.n_training()
    return {"profile": profile, "grid": g, "threads": torch.get_num_threads(), "batch_size": bs,
            "joint_train_s_per_sample": train_s, "joint_infer_s_per_subject": infer_s,
            "joint_s_per_epoch": train_s * n_train}


def review_costs(profile: str = "default", *, n_subjects: int = 3) -> dict[str, Any]:
    """Return timings of the review at ``profile``'s grid: report seconds per map and per case
    (truth + 4 perturbed copies standing in for methods), and the statistics on the result."""
    from fetalcmr.config import get_profile
    from fetalcmr.synth import generate_subject

    cfg = get_profile(profile).cohort
    cases = []
    for s in range(n_subjects):
        sub = generate_subject(s % 3, seed=s, grid=cfg.grid, spacing_mm=cfg.spacing_mm)
        broken = sub.gt.copy()
        broken[broken == LABEL_INDEX["LSA"]] = 0
        truth, lp, only, manual, joint = review_order()
        maps = {truth: sub.gt, lp: sub.gt, only: broken, manual: sub.gt, joint: sub.gt}
        cases.append(ReviewCase(f"b{s}", s % 3, (cfg.spacing_mm,) * 3, maps, trachea_mask=sub.trachea > 0))
    t0 = time.perf_counter()
    reports = review_table(cases)
    review_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    correct_rates(reports)
    mcnemar_table(reports, METHODS["net_lp_manual"].short, METHODS["joint"].short, {"all": reports["id"]})
    stats_s = time.perf_counter() - t0
    n_maps = len(reports)
    return {"grid": cfg.grid, "n_cases": n_subjects, "n_maps": n_maps,
            "report_s_per_map_mean": float(reports["seconds"].mean()),
            "report_s_per_map_max": float(reports["seconds"].max()),
            "review_s_per_case": review_s / n_subjects, "stats_s": stats_s,
            "broken_flagged": bool((~reports.loc[reports["method"] == METHODS["net_lp"].short, "correct"]
                                    .astype(bool)).all())}


def paper_step_costs(device: str | None = None, repeat: int = 2) -> dict[str, Any]:
    """Return seconds per training step of each stage at the ``paper`` profile's sizes and batch
    sizes (80³, random inputs, float32) on ``device`` (CUDA when available), and the hours the
    paper's schedule implies per network (steps × iterations or epochs × batches per epoch)."""
    from fetalcmr.config import get_profile
    from fetalcmr.losses import SegmentationLoss, joint_loss
    from fetalcmr.propagation import RegistrationLoss, build_model, registration_step

    prof = get_profile("paper")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = prof.cohort.grid
    n_train = prof.cohort.n_training()
    out: dict[str, Any] = {"device": dev.type, "grid": g, "threads": torch.get_num_threads()}

    def timed_step(model: nn.Module, loss_of: Callable[[], torch.Tensor]) -> float:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            opt.zero_grad()
            loss_of().backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()

        return _time(step, repeat)

    torch.manual_seed(0)
    pcfg = prof.propagation
    vxm, reg_loss = build_model(pcfg).to(dev).train(), RegistrationLoss(pcfg).to(dev)
    img = torch.rand(pcfg.batch_size, 1, g, g, g, device=dev)
    fg = (img > 0.5).float()
    s = timed_step(vxm, lambda: registration_step(vxm, reg_loss, img, fg, img.roll(2, 2), fg.roll(2, 2))[0])
    out["propagation_step_s"], out["propagation_train_h"] = s, s * pcfg.iterations / 3600

    scfg, bs = prof.segmenter, prof.segmenter.batch_size
    seg_loss = SegmentationLoss("lp+binary")
    x = torch.rand(bs, 1, g, g, g, device=dev)
    lp = torch.randint(0, N_LABELS, (bs, g, g, g), device=dev)
    net = make_segmenter(scfg).to(dev).train()
    s = timed_step(net, lambda: seg_loss(net(x), lp=lp, binary=(lp > 0).long(), epoch=0)[0])
    out["segmenter_step_s"] = s
    out["segmenter_train_h"] = s * scfg.epochs * -(-n_train // bs) / 3600

    ccfg, cbs = prof.classifier, prof.classifier.batch_size
    cls = build_classifier(ccfg, "softmax+image").to(dev).train()
    xc = torch.rand(cbs, N_LABELS + 1, g, g, g, device=dev)
    labels = torch.arange(cbs, device=dev) % len(CLASSES)
    s = timed_step(cls, lambda: F.cross_entropy(cls(xc), labels))
    out["classifier_step_s"], out["classifier_train_h"] = s, s * ccfg.epochs * -(-n_train // cbs) / 3600

    jcfg, jbs = prof.joint, prof.joint.batch_size
    pair = build_joint(scfg, ccfg).to(dev).train()
    xj, lpj = x[:1].expand(jbs, -1, -1, -1, -1).contiguous(), lp[:1].expand(jbs, -1, -1, -1).contiguous()
    lj = torch.arange(jbs, device=dev) % len(CLASSES)

    def pair_loss() -> torch.Tensor:
        seg_logits, logits = pair(xj)
        return joint_loss(seg_loss(seg_logits, lp=lpj, binary=(lpj > 0).long(), epoch=0)[0], logits, lj,
                          jcfg.lam)[0]

    s = timed_step(pair, pair_loss)
    out["joint_step_s"], out["joint_train_h"] = s, s * jcfg.epochs * -(-n_train // jbs) / 3600
    return out
