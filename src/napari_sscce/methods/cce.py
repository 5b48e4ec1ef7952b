"""CCE: the dual-network method (Lu et al., arXiv:2509.13084).

Two different networks (VNet and ResNet-34 VNet), independently initialised, each with its own SGD
optimiser. The paper's method, as trained by default (``CCEMethod.default_options``, set with
``--option KEY=VALUE``):

* ``sup``: per network, ``0.5 CE + 0.5 Dice`` on confirmed labeled voxels (the CPS-3D weighting of
  SSL4MIS, github.com/HiLab-git/SSL4MIS).
* ``cps``: cross pseudo supervision (Chen et al., arXiv:2106.01226) on unlabeled voxels: each net learns
  the other's argmax (no gradient through the label) on the voxels the *provider's* percentile entropy
  mask keeps (entropy of its probabilities; the top ``entropy_percentile`` % of the batch's unlabeled
  voxels are dropped).
* ``kl_weighting``: the pseudo-label CE of each voxel is multiplied by ``exp(-KL)`` (detached; KL between
  the two nets' probabilities at temperature ``kl_temperature``, ``KL(p_provider || p_learner)``), and the
  weighted sum is divided by the number of kept voxels so that disagreement lowers the term.
  ``kl``: the mean symmetric KL over unlabeled voxels is added as a regulariser (gradient to both nets).
* ``contrast`` (**off by default**): prototype InfoNCE. Per net, prototypes = mean of that net's
  L2-normalised embeddings over reliable voxels of each class (labeled voxels with their label, and
  unlabeled voxels both entropy masks keep and both nets agree on, with the agreed class), detached.
  Uncertain voxels (unlabeled voxels an entropy mask dropped; at most ``contrast_max_anchors`` at random)
  are pulled toward the prototype of their pseudo-class (argmax of the mean prediction) and pushed from
  the others: cross-entropy over cosine similarities / ``contrast_temperature`` (0.1). Classes without a
  prototype in the batch are left out. The embeddings come from a projection head
  (``contrast_projection_dim = 32``: 1x1x1 conv, norm, ReLU, 1x1x1 conv, as SimCLR, arXiv:2002.05709, and
  ReCo, arXiv:2104.04465), built only when the term is on, saved with the networks and never used for
  prediction; ``contrast_projection_dim=0`` puts the term on the last decoder features, as the paper
  words it. It is off because it lowered the validation Dice in our measurements (README, "Semi-supervised
  learning"; ``benchmarks/results/``), and in the released code it sent no gradient, so the published
  numbers were obtained without it acting.

Unsupervised terms ramp with ``sigmoid_rampup(t // rampup_step, rampup_length)`` (``TrainConfig``); each
term's base weight is 0.1 (the paper's weight of the contrastive term; SSL4MIS's for CPS). "Unlabeled
voxels" are the voxels with ``mask == 0``: the unlabeled rows and the unannotated part of partially
labeled rows (``Batch.unlabeled_weight``).

Ablation variants, not part of the method (``CCEMethod.experimental_options``, all off; switched on with
``--option`` like the others, computed by ``CCEMethod.experimental_*_terms``):

* ``conf_mse``: where exactly one net is confident (max prob >= ``conf_threshold``) about foreground, the
  MSE between its foreground probability and the label (weight ``conf_mse_weight``).
* ``cosine``: consistency, mean over unlabeled voxels of ``1 - cos(p_A, p_B)``.
* ``contrast_balanced``: at most ``contrast_max_anchors // k`` anchors of each of the ``k`` anchor classes,
  loss averaged per class (as ReCo and U2PL, arXiv:2203.03884, sample anchors);
  ``contrast_soft_targets``: the mean probabilities as contrastive targets instead of the hard class.
* ``foreground_first``: hard pseudo-labels and anchor classes take "foreground if background < 0.5, then
  the best foreground class" instead of a plain argmax (:func:`pseudo_labels`); identical for two classes.

Bugs of the released code that are *not* reproduced: entropy is taken on probabilities (not logits), the
pseudo-label and prototype terms carry gradient to the learner, and each net's uncertain features are
pulled to its own (detached) prototypes instead of pulling the two nets' prototypes together.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from napari_sscce.divergence import entropy, kl
from napari_sscce.methods.base import Batch, TrainingMethod
from napari_sscce.methods.losses import masked_cross_entropy, supervised_loss
from napari_sscce.methods.registry import register_method
from napari_sscce.tensor_ops import class_argmax


def entropy_keep_mask(entropy: torch.Tensor, valid: torch.Tensor, percent: float) -> torch.Tensor:
    """Percentile entropy filter: keep the valid voxels outside the top ``percent`` % of entropies.

    Parameters
    ----------
    entropy : torch.Tensor
        ``[B, Z, Y, X]`` voxel entropies (of probabilities).
    valid : torch.Tensor
        ``[B, Z, Y, X]`` bool, the voxels taking part (the batch's unlabeled voxels).
    percent : float
        Share of the valid voxels to drop, in percent: exactly ``round(n * percent / 100)`` of the
        ``n`` valid voxels, those of highest entropy (ties broken by position).

    Returns
    -------
    torch.Tensor
        bool mask, True on kept voxels (always False outside ``valid``).
    """
    keep = valid.clone()
    flat_valid = valid.reshape(-1)
    n = int(flat_valid.sum())
    k = int(round(n * float(percent) / 100.0))
    if n == 0 or k <= 0:
        return keep
    idx = flat_valid.nonzero(as_tuple=True)[0]
    values = entropy.reshape(-1)[idx].float()
    drop = idx[torch.topk(values, k, largest=True, sorted=False).indices]
    flat = keep.reshape(-1)
    flat[drop] = False
    return flat.reshape(valid.shape)


def pseudo_labels(prob: torch.Tensor, foreground_first: bool = True) -> torch.Tensor:
    """Hard pseudo-labels ``[B, Z, Y, X]`` from probabilities ``[B, C, Z, Y, X]`` (class 0 = background).

    With ``foreground_first`` a voxel is foreground when the background probability is below 0.5, and then
    takes the most probable foreground class. Plain argmax (``foreground_first=False``) lets a voxel whose
    foreground mass is split between several classes (say 0.38 / 0.31 / 0.31 early in training on the two
    hippocampus parts) fall to background, and the pseudo-label and prototype terms then teach background on
    the object itself. For two classes both rules are the same.
    """
    if not foreground_first or prob.shape[1] <= 2:
        return class_argmax(prob, 1)
    fg_class = class_argmax(prob[:, 1:], 1) + 1
    return torch.where(prob[:, 0] < 0.5, fg_class, torch.zeros_like(fg_class))


def kl_weights(p_provider: torch.Tensor, p_learner: torch.Tensor) -> torch.Tensor:
    """``exp(-KL(p_provider || p_learner))`` per voxel (detached): 1 where the two agree, toward 0 apart."""
    with torch.no_grad():
        return torch.exp(-kl(p_provider, p_learner))


def prototype_contrastive_loss(
    features: torch.Tensor,
    proto_class: torch.Tensor,
    anchor_mask: torch.Tensor,
    anchor_class: torch.Tensor,
    num_classes: int,
    temperature: float = 0.1,
    max_anchors: int = 4096,
    balanced: bool = False,
    anchor_prob: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of uncertain voxels against detached class prototypes.

    Parameters
    ----------
    features : torch.Tensor
        ``[B, D, Z, Y, X]`` features of one network.
    proto_class : torch.Tensor
        ``[B, Z, Y, X]`` long: the class of each reliable voxel, ``-1`` elsewhere.
    anchor_mask : torch.Tensor
        ``[B, Z, Y, X]`` bool: uncertain voxels to pull.
    anchor_class : torch.Tensor
        ``[B, Z, Y, X]`` long: their pseudo-class.
    num_classes : int
    temperature : float
    max_anchors : int
        Random subsample bound (``torch.randperm``, so the global torch seed decides it).
    balanced : bool
        Class-balanced subsample: at most ``max_anchors // k`` anchors of each of the ``k`` anchor
        classes present, and the loss is the mean over classes of each class's mean (every class
        counts the same, however many of its voxels are uncertain). Plain random subsample and one
        mean over anchors otherwise.
    anchor_prob : torch.Tensor, optional
        ``[B, C, Z, Y, X]`` probabilities: soft targets (restricted to the classes with a prototype and
        renormalised) instead of the hard ``anchor_class``; ``anchor_class`` still picks the classes
        for balancing.

    Returns
    -------
    torch.Tensor
        Scalar; 0 (with a graph) when no anchor has a prototype for its class.
    """
    feats = features.float().movedim(1, -1)  # [B, Z, Y, X, D]
    dim = feats.shape[-1]
    zero = feats.sum() * 0.0
    with torch.no_grad():
        rel = proto_class >= 0
        if not rel.any():
            return zero
        rel_feats = F.normalize(feats[rel].detach(), dim=1)
        rel_cls = proto_class[rel]
        sums = torch.zeros(num_classes, dim, device=feats.device).index_add_(0, rel_cls, rel_feats)
        counts = torch.bincount(rel_cls, minlength=num_classes)
        present = counts > 0
        protos = F.normalize(sums / counts.clamp_min(1).unsqueeze(1), dim=1)
    cls = anchor_class[anchor_mask]
    has_prototype = present[cls]
    index = anchor_mask.reshape(-1).nonzero(as_tuple=True)[0][has_prototype]
    cls = cls[has_prototype]
    if index.numel() == 0:
        return zero
    pick = _anchor_subsample(cls, max_anchors, balanced)
    index, cls = index[pick], cls[pick]
    anchors = feats.reshape(-1, dim)[index]
    sims = F.normalize(anchors, dim=1) @ protos.t() / float(temperature)  # [N, C]
    log_p = torch.log_softmax(sims.masked_fill(~present.unsqueeze(0), float("-inf")), dim=1)
    if anchor_prob is None:
        per_anchor = -log_p.gather(1, cls.unsqueeze(1)).squeeze(1)
    else:
        with torch.no_grad():
            target = anchor_prob.detach().float().movedim(1, -1).reshape(-1, num_classes)[index]
            target = target * present.unsqueeze(0)
            target = target / target.sum(1, keepdim=True).clamp_min(1e-12)
        per_anchor = -(target * log_p.masked_fill(~present.unsqueeze(0), 0.0)).sum(1)
    per_anchor = per_anchor.float()  # bf16 under CPU autocast
    if not balanced:
        return per_anchor.mean()
    sums = torch.zeros(num_classes, device=per_anchor.device).index_add(0, cls, per_anchor)
    counts = torch.bincount(cls, minlength=num_classes)
    has = counts > 0
    return (sums[has] / counts[has]).mean()


def _anchor_subsample(cls: torch.Tensor, max_anchors: int, balanced: bool) -> torch.Tensor:
    """Indices into ``cls`` of the anchors kept: random, or at most ``max_anchors // k`` per class."""
    n = cls.numel()
    if not balanced:
        if n <= max_anchors:
            return torch.arange(n, device=cls.device)
        return torch.randperm(n, device=cls.device)[:max_anchors]
    classes = torch.unique(cls)
    per_class = max(1, int(max_anchors) // int(classes.numel()))
    picks = []
    for c in classes.tolist():
        members = (cls == c).nonzero(as_tuple=True)[0]
        if members.numel() > per_class:
            members = members[torch.randperm(members.numel(), device=cls.device)[:per_class]]
        picks.append(members)
    return torch.cat(picks)


def confident_mse(
    prob_self: torch.Tensor,
    prob_other: torch.Tensor,
    label: torch.Tensor,
    mask: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """MSE of this net's foreground probability to the label where only this net is confidently foreground."""
    def confident_fg(p: torch.Tensor) -> torch.Tensor:
        maxp, arg = p.max(1)
        return (maxp >= threshold) & (arg > 0)

    with torch.no_grad():
        sel = (confident_fg(prob_self) & ~confident_fg(prob_other)).float() * mask
    fg = 1.0 - prob_self[:, 0]
    diff = (fg - (label > 0).float()) ** 2
    return (diff * sel).sum() / sel.sum().clamp_min(1.0)


def _embedding(net: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Features seen by the contrastive term: the net's projection head output, if it has one."""
    project = getattr(getattr(net, "module", net), "project", None)  # DDP wraps the network
    return features if project is None else project(features)


class _Targets(NamedTuple):
    """What the unlabeled terms share: detached probabilities, pseudo-labels, entropy keep masks."""

    pa: torch.Tensor
    pb: torch.Tensor
    pseudo_a: torch.Tensor
    pseudo_b: torch.Tensor
    keep_a: torch.Tensor
    keep_b: torch.Tensor
    unl: torch.Tensor


@register_method
class CCEMethod(TrainingMethod):
    """Dual-network CCE training (see the module docstring for every term)."""

    name: ClassVar[str] = "cce"
    label: ClassVar[str] = "CCE (dual network)"
    default_networks: ClassVar[tuple[str, str]] = ("vnet", "resnet_vnet")
    model_kind: ClassVar[str] = "dual"
    #: the paper's method (module docstring)
    default_options: ClassVar[dict[str, Any]] = {
        "sup": True,
        "sup_ce_weight": 0.5,
        "sup_dice_weight": 0.5,
        "cps": True,
        "cps_weight": 0.1,
        "entropy_filter": True,
        "entropy_percentile": 20.0,
        "kl_weighting": True,
        "kl": True,
        "kl_weight": 0.1,
        "kl_temperature": 0.5,
        "contrast": False,
        "contrast_weight": 0.1,
        "contrast_temperature": 0.1,
        "contrast_max_anchors": 4096,
        "contrast_projection_dim": 32,
    }
    #: ablation variants, not part of the method (module docstring); all off
    experimental_options: ClassVar[dict[str, Any]] = {
        "conf_mse": False,
        "conf_mse_weight": 0.5,
        "conf_threshold": 0.6,
        "cosine": False,
        "cosine_weight": 0.1,
        "contrast_balanced": False,
        "contrast_soft_targets": False,
        "foreground_first": False,
    }

    def network_kwargs(self, in_channels: int, num_classes: int) -> dict[str, Any]:
        """The base networks' arguments, plus a projection head when the contrastive term asks for one."""
        kwargs = super().network_kwargs(in_channels, num_classes)
        dim = int(self.options["contrast_projection_dim"])
        if self.options["contrast"] and dim > 0:
            kwargs["projection_dim"] = dim
        return kwargs

    def terms(self, model, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        """Every switched-on term, unweighted (``sup_a``, ``cps_b``, ``kl``, ``contrast_a`` ...)."""
        o = self.options
        out_a, out_b = model.net_a(batch.image), model.net_b(batch.image)
        logits_a, logits_b = out_a[0].float(), out_b[0].float()
        p_a, p_b = torch.softmax(logits_a, 1), torch.softmax(logits_b, 1)
        lb = batch.labeled_bs
        terms: dict[str, torch.Tensor] = {}
        if o["sup"] and lb > 0:
            for key, logits in (("a", logits_a), ("b", logits_b)):
                terms[f"sup_{key}"] = supervised_loss(
                    logits[:lb], batch.label[:lb], batch.mask[:lb], o["sup_ce_weight"], o["sup_dice_weight"]
                )
        terms.update(self.experimental_labeled_terms(p_a, p_b, batch))
        unl = batch.unlabeled_weight() > 0
        if not bool(unl.any()):
            return terms
        targets = self._targets(p_a, p_b, unl)
        if o["cps"]:
            terms.update(self._cps_terms(logits_a, logits_b, targets))
        if o["kl"]:
            terms["kl"] = self._kl_term(logits_a, logits_b, unl)
        if o["contrast"]:
            terms.update(self._contrast_terms(model, (out_a[1], out_b[1]), batch, targets))
        terms.update(self.experimental_unlabeled_terms(p_a, p_b, unl))
        return terms

    def _targets(self, p_a: torch.Tensor, p_b: torch.Tensor, unl: torch.Tensor) -> _Targets:
        """Detached probabilities, hard pseudo-labels and each net's entropy keep mask."""
        o = self.options
        with torch.no_grad():
            pa_d, pb_d = p_a.detach(), p_b.detach()
            fg_first = bool(o["foreground_first"])
            pseudo_a, pseudo_b = pseudo_labels(pa_d, fg_first), pseudo_labels(pb_d, fg_first)
            if o["entropy_filter"]:
                keep_a = entropy_keep_mask(entropy(pa_d), unl, o["entropy_percentile"])
                keep_b = entropy_keep_mask(entropy(pb_d), unl, o["entropy_percentile"])
            else:
                keep_a = keep_b = unl
        return _Targets(pa_d, pb_d, pseudo_a, pseudo_b, keep_a, keep_b, unl)

    def _cps_terms(self, logits_a, logits_b, t: _Targets) -> dict[str, torch.Tensor]:
        """Cross pseudo supervision, each voxel weighted by ``exp(-KL)`` when ``kl_weighting``."""
        if self.options["kl_weighting"]:
            temp = float(self.options["kl_temperature"])
            ta = torch.softmax(logits_a.detach() / temp, 1)
            tb = torch.softmax(logits_b.detach() / temp, 1)
            w_a = kl_weights(tb, ta)  # net A learns B's labels
            w_b = kl_weights(ta, tb)
        else:
            w_a = w_b = torch.ones_like(t.unl, dtype=torch.float32)
        return {
            "cps_a": masked_cross_entropy(logits_a, t.pseudo_b, t.keep_b.float() * w_a, t.keep_b.sum()),
            "cps_b": masked_cross_entropy(logits_b, t.pseudo_a, t.keep_a.float() * w_b, t.keep_a.sum()),
        }

    def _kl_term(self, logits_a: torch.Tensor, logits_b: torch.Tensor, unl: torch.Tensor) -> torch.Tensor:
        """Mean symmetric KL over unlabeled voxels at temperature ``kl_temperature`` (gradient to both)."""
        temp = float(self.options["kl_temperature"])
        ta, tb = torch.softmax(logits_a / temp, 1), torch.softmax(logits_b / temp, 1)
        sym = kl(ta, tb, symmetric=True)
        u = unl.float()
        return (sym * u).sum() / u.sum()

    def _contrast_terms(self, model, features: tuple, batch: Batch, t: _Targets) -> dict[str, torch.Tensor]:
        """Prototype InfoNCE of each net's uncertain voxels (:func:`prototype_contrastive_loss`)."""
        o = self.options
        label, mask = batch.label, batch.mask
        with torch.no_grad():
            confirmed = mask > 0
            agree = t.keep_a & t.keep_b & (t.pseudo_a == t.pseudo_b)
            proto_class = torch.full_like(label, -1)
            proto_class[agree] = t.pseudo_a[agree]
            proto_class[confirmed] = label[confirmed]
            uncertain = t.unl & ~(t.keep_a & t.keep_b)
            p_mean = 0.5 * (t.pa + t.pb)
            anchor_class = pseudo_labels(p_mean, bool(o["foreground_first"]))
        terms = {}
        for key, net, feat in (("a", model.net_a, features[0]), ("b", model.net_b, features[1])):
            terms[f"contrast_{key}"] = prototype_contrastive_loss(
                _embedding(net, feat),
                proto_class,
                uncertain,
                anchor_class,
                t.pa.shape[1],
                o["contrast_temperature"],
                int(o["contrast_max_anchors"]),
                balanced=bool(o["contrast_balanced"]),
                anchor_prob=p_mean if o["contrast_soft_targets"] else None,
            )
        return terms

    # ------------------------------------------------------------------ ablation variants
    def experimental_labeled_terms(self, p_a, p_b, batch: Batch) -> dict[str, torch.Tensor]:
        """``conf_mse_a/_b`` when the ``conf_mse`` ablation is on (module docstring)."""
        o, lb = self.options, batch.labeled_bs
        if not (o["conf_mse"] and lb > 0):
            return {}
        thr, label, mask = o["conf_threshold"], batch.label[:lb], batch.mask[:lb]
        return {
            "conf_mse_a": confident_mse(p_a[:lb], p_b[:lb].detach(), label, mask, thr),
            "conf_mse_b": confident_mse(p_b[:lb], p_a[:lb].detach(), label, mask, thr),
        }

    def experimental_unlabeled_terms(self, p_a, p_b, unl: torch.Tensor) -> dict[str, torch.Tensor]:
        """``cosine`` when the ``cosine`` ablation is on (module docstring)."""
        if not self.options["cosine"]:
            return {}
        cos = F.cosine_similarity(p_a, p_b, dim=1, eps=1e-8)
        u = unl.float()
        return {"cosine": ((1.0 - cos) * u).sum() / u.sum()}

    def term_weights(self, iteration: int) -> dict[str, float]:
        """Weight of each term at ``iteration`` (unsupervised terms ramped)."""
        o = self.options
        ramp = self.rampup_weight(iteration)
        return {
            "sup": 1.0,
            "conf_mse": float(o["conf_mse_weight"]),
            "cps": float(o["cps_weight"]) * ramp,
            "kl": float(o["kl_weight"]) * ramp,
            "contrast": float(o["contrast_weight"]) * ramp,
            "cosine": float(o["cosine_weight"]) * ramp,
        }

    def losses(self, model, batch: Batch, iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Total = sum over both nets of their supervised terms + weighted unsupervised terms."""
        terms = self.terms(model, batch, iteration)
        weights = self.term_weights(iteration)
        total = None
        for key, value in terms.items():
            w = weights[key.rsplit("_", 1)[0] if key.endswith(("_a", "_b")) else key]
            total = value * w if total is None else total + value * w
        if total is None:  # nothing switched on: a zero loss that still reaches both nets
            total = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
        logged = {k: float(v.detach()) for k, v in terms.items()}
        logged["ramp"] = self.rampup_weight(iteration)
        return total, logged
