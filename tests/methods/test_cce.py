import pytest
import torch
from cce_helpers import tiny_batch, tiny_dual

from napari_sscce.methods import METHODS, get_method
from napari_sscce.methods.cce import (
    CCEMethod,
    entropy_keep_mask,
    kl_weights,
    prototype_contrastive_loss,
)
from napari_sscce.methods.supervised import SupervisedMethod
from napari_sscce.training.config import TrainConfig

ALL_ON = {"conf_mse": True, "cosine": True, "contrast": True, "conf_threshold": 0.0}


def _grad_norms(model):
    def norm(net):
        return sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None)

    return norm(model.net_a), norm(model.net_b)


EXPECTED_GRADIENT = {  # term: (reaches net_a, reaches net_b)
    "sup_a": (True, False),
    "sup_b": (False, True),
    "conf_mse_a": (True, False),
    "conf_mse_b": (False, True),
    "cps_a": (True, False),
    "cps_b": (False, True),
    "contrast_a": (True, False),
    "contrast_b": (False, True),
    "kl": (True, True),
    "cosine": (True, True),
}


def test_each_term_sends_gradient_only_where_it_should():
    model = tiny_dual()
    method = CCEMethod(TrainConfig(method_options=ALL_ON))
    torch.manual_seed(0)
    terms = method.terms(model, tiny_batch(), iteration=0)
    assert set(terms) == set(EXPECTED_GRADIENT)
    for term, (to_a, to_b) in EXPECTED_GRADIENT.items():
        model.zero_grad(set_to_none=True)
        terms[term].backward(retain_graph=True)
        grad_a, grad_b = _grad_norms(model)
        assert (grad_a > 0) == to_a, f"{term}: gradient to net_a = {grad_a}"
        assert (grad_b > 0) == to_b, f"{term}: gradient to net_b = {grad_b}"


def test_total_loss_moves_both_networks_and_logs_terms():
    model = tiny_dual()
    method = CCEMethod(TrainConfig(method_options={"contrast": True}))
    total, logged = method.losses(model, tiny_batch(), iteration=10)
    total.backward()
    assert all(v > 0 for v in _grad_norms(model))
    for key in ("sup_a", "sup_b", "cps_a", "cps_b", "kl", "contrast_a", "contrast_b"):
        assert key in logged and logged[key] == logged[key]  # present and not NaN


def test_switches_remove_terms():
    method = CCEMethod(TrainConfig(method_options={"cps": False, "contrast": False, "kl": False}))
    terms = method.terms(tiny_dual(), tiny_batch(), 0)
    assert set(terms) == {"sup_a", "sup_b"}
    with pytest.raises(ValueError, match="unknown option"):
        CCEMethod(TrainConfig(method_options={"cpss": False}))


def test_entropy_mask_drops_stated_fraction():
    entropy = torch.arange(200, dtype=torch.float32).reshape(2, 1, 10, 10)
    valid = torch.ones(2, 1, 10, 10, dtype=torch.bool)
    valid[0] = False  # only the 100 voxels of row 1 take part
    keep = entropy_keep_mask(entropy, valid, 20.0)
    assert int(keep.sum()) == 80
    assert not keep[0].any()
    kept_values = entropy[keep]
    assert float(kept_values.max()) == 179.0  # the 20 highest (180..199) were dropped
    assert int(entropy_keep_mask(entropy, valid, 0.0).sum()) == 100


def test_kl_weight_is_one_where_networks_agree():
    p = torch.softmax(torch.randn(1, 3, 4, 4, 4), 1)
    q = p.clone()
    q[..., 0] = torch.softmax(torch.randn(1, 3, 4, 4), 1)  # disagree on the first x-column
    w = kl_weights(p, q)
    assert torch.allclose(w[..., 1:], torch.ones_like(w[..., 1:]), atol=1e-6)
    assert (w[..., 0] < 1).all() and (w > 0).all()


def test_contrastive_loss_falls_as_uncertain_features_move_to_prototype():
    torch.manual_seed(0)
    d, n = 8, 6
    feats = torch.zeros(1, d, 1, 1, 2 * n + 2)
    feats[0, 0, 0, 0, :n] = 1.0  # reliable class 0 along axis 0
    feats[0, 1, 0, 0, n : 2 * n] = 1.0  # reliable class 1 along axis 1
    proto_class = torch.full((1, 1, 1, 2 * n + 2), -1, dtype=torch.long)
    proto_class[..., :n] = 0
    proto_class[..., n : 2 * n] = 1
    anchor = torch.zeros_like(proto_class, dtype=torch.bool)
    anchor[..., 2 * n :] = True
    anchor_class = torch.ones_like(proto_class)  # the uncertain voxels belong to class 1

    def loss_at(t: float) -> float:
        f = feats.clone()
        f[0, :, 0, 0, 2 * n :] = 0.0
        f[0, 0, 0, 0, 2 * n :] = 1.0 - t
        f[0, 1, 0, 0, 2 * n :] = t
        return float(prototype_contrastive_loss(f, proto_class, anchor, anchor_class, 2, 0.1))

    losses = [loss_at(t) for t in (0.1, 0.5, 0.9)]
    assert losses[0] > losses[1] > losses[2]


def test_partial_label_mask_restricts_supervised_loss():
    model = tiny_dual()
    method = CCEMethod(TrainConfig(method_options={"cps": False, "contrast": False, "kl": False}))
    batch = tiny_batch()
    batch.mask[0, 8:] = 0.0  # only half of the labeled volume is confirmed
    image = batch.image.clone().requires_grad_(True)
    batch.image = image
    method.terms(model, batch, 0)["sup_a"].backward()
    # change labels where the mask is 0: the loss must not change
    ref = float(method.terms(model, batch, 0)["sup_a"])
    batch.label[0, 8:] = 2 - batch.label[0, 8:]
    assert float(method.terms(model, batch, 0)["sup_a"]) == pytest.approx(ref, rel=1e-6)
    batch.label[0, :8] = 2 - batch.label[0, :8]
    assert float(method.terms(model, batch, 0)["sup_a"]) != pytest.approx(ref, rel=1e-3)


def test_partially_labeled_rows_feed_unsupervised_terms():
    model = tiny_dual()
    method = CCEMethod(TrainConfig(method_options={"contrast": False, "kl": False}))
    batch = tiny_batch(labeled_bs=2, unlabeled_bs=0)  # no unlabeled row at all
    assert "cps_a" not in method.terms(model, batch, 0)
    batch.mask[0, 8:] = 0.0
    terms = method.terms(model, batch, 0)
    assert "cps_a" in terms and float(terms["cps_a"]) > 0


def test_supervised_method_and_registry():
    assert set(METHODS) >= {"cce", "supervised", "ugmcl"}
    assert get_method("cce") is CCEMethod and METHODS["supervised"] is SupervisedMethod
    with pytest.raises(ValueError, match="unknown training method"):
        get_method("nope")
    model = tiny_dual()
    total, logged = SupervisedMethod(TrainConfig()).losses(model, tiny_batch(labeled_bs=2), 0)
    total.backward()
    assert set(logged) == {"sup_a", "sup_b"} and all(v > 0 for v in _grad_norms(model))
    assert not SupervisedMethod.uses_unlabeled


def test_foreground_first_pseudo_labels_keep_split_foreground():
    from napari_sscce.methods.cce import pseudo_labels

    # one voxel whose foreground mass (0.62) is split between two classes, one clear background voxel,
    # one clear class-2 voxel: shape [B=1, C=3, 1, 1, 3]
    prob = torch.tensor([[0.38, 0.9, 0.1], [0.33, 0.05, 0.1], [0.29, 0.05, 0.8]]).reshape(1, 3, 1, 1, 3)
    assert pseudo_labels(prob, foreground_first=False).flatten().tolist() == [0, 0, 2]
    assert pseudo_labels(prob, foreground_first=True).flatten().tolist() == [1, 0, 2]
    binary = torch.tensor([[0.6, 0.3], [0.4, 0.7]]).reshape(1, 2, 1, 1, 2)
    assert torch.equal(pseudo_labels(binary, True), pseudo_labels(binary, False))


def _two_prototype_setup(n_bg_anchors: int, n_fg_anchors: int):
    """Reliable voxels on axes 0 (class 0) and 1 (class 1); anchors at 45 degrees between them."""
    n_rel = 4
    n = 2 * n_rel + n_bg_anchors + n_fg_anchors
    feats = torch.zeros(1, 4, 1, 1, n)
    feats[0, 0, 0, 0, :n_rel] = 1.0
    feats[0, 1, 0, 0, n_rel : 2 * n_rel] = 1.0
    feats[0, 0, 0, 0, 2 * n_rel :] = 1.0
    feats[0, 1, 0, 0, 2 * n_rel :] = 1.0
    proto_class = torch.full((1, 1, 1, n), -1, dtype=torch.long)
    proto_class[..., :n_rel] = 0
    proto_class[..., n_rel : 2 * n_rel] = 1
    anchor = torch.zeros_like(proto_class, dtype=torch.bool)
    anchor[..., 2 * n_rel :] = True
    anchor_class = torch.zeros_like(proto_class)
    anchor_class[..., 2 * n_rel + n_bg_anchors :] = 1
    return feats, proto_class, anchor, anchor_class


def test_balanced_contrast_weighs_each_class_equally_whatever_its_anchor_count():
    def fg_pull(n_bg: int, balanced: bool) -> float:
        """Gradient along the class-1 axis on the class-1 anchors (positive = pulled toward class 1)."""
        feats, proto_class, anchor, anchor_class = _two_prototype_setup(n_bg, 3)
        feats.requires_grad_(True)
        loss = prototype_contrastive_loss(feats, proto_class, anchor, anchor_class, 2, 0.1, balanced=balanced)
        loss.backward()
        return float(-feats.grad[0, 1, 0, 0, -3:].sum())

    # plain mean: the more background anchors, the weaker the pull of the 3 class-1 anchors
    assert fg_pull(30, balanced=False) < 0.5 * fg_pull(3, balanced=False)
    # class-balanced: the pull on the class-1 anchors does not depend on how many background anchors there are
    assert fg_pull(30, balanced=True) == pytest.approx(fg_pull(3, balanced=True), rel=1e-5)
    assert fg_pull(3, balanced=True) > 0


def test_balanced_subsample_keeps_at_most_an_equal_share_per_class():
    from napari_sscce.methods.cce import _anchor_subsample

    cls = torch.tensor([0] * 100 + [1] * 5 + [2] * 40)
    torch.manual_seed(0)
    pick = _anchor_subsample(cls, 30, balanced=True)
    counts = torch.bincount(cls[pick], minlength=3).tolist()
    assert counts == [10, 5, 10]
    assert len(set(pick.tolist())) == len(pick)
    plain = _anchor_subsample(cls, 30, balanced=False)
    assert plain.numel() == 30


def test_soft_targets_leave_an_evenly_split_voxel_between_its_prototypes():
    feats, proto_class, anchor, anchor_class = _two_prototype_setup(0, 1)  # one anchor, hard class 1
    prob = torch.zeros(1, 2, 1, 1, feats.shape[-1])
    prob[:, :, ..., -1] = 0.5  # the anchor is 50/50
    grads = {}
    for soft in (False, True):
        f = feats.clone().requires_grad_(True)
        loss = prototype_contrastive_loss(
            f, proto_class, anchor, anchor_class, 2, 0.1, anchor_prob=prob if soft else None
        )
        loss.backward()
        grads[soft] = f.grad[0, :, 0, 0, -1]
    assert float(grads[False].abs().sum()) > 1.0  # the hard label drags it to class 1
    assert float(grads[True].abs().sum()) < 1e-5  # the soft target is already met at the midpoint


def test_balanced_contrast_runs_under_cpu_bf16_autocast():
    feats, proto_class, anchor, anchor_class = _two_prototype_setup(5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = prototype_contrastive_loss(feats, proto_class, anchor, anchor_class, 2, 0.1, balanced=True)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_projection_head_carries_the_contrastive_term_and_not_the_prediction(tmp_path):
    from napari_sscce.models.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    options = {"contrast": True, "contrast_projection_dim": 6}
    method = CCEMethod(TrainConfig(base_filters=4, has_dropout=False, method_options=options))
    model = method.build_model(1, 3)
    for net in (model.net_a, model.net_b):
        assert net.projection is not None and net.spec["kwargs"]["projection_dim"] == 6
    terms = method.terms(model, tiny_batch(), iteration=0)
    model.zero_grad(set_to_none=True)
    terms["contrast_a"].backward()
    head_grad = sum(float(p.grad.abs().sum()) for p in model.net_a.projection.parameters())
    assert head_grad > 0
    assert all(p.grad is None for p in model.net_b.parameters())

    # the head never enters the prediction, and a checkpoint rebuilds it with its weights
    x = torch.randn(1, 1, 16, 16, 16)
    model.eval()
    with torch.no_grad():
        before = model.net_a(x)[0].clone()
        model.net_a.projection[-1].weight.add_(1.0)
        torch.testing.assert_close(model.net_a(x)[0], before)
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"method": "cce"})
    loaded = load_checkpoint(path).model
    torch.testing.assert_close(
        loaded.net_a.projection[-1].weight, model.net_a.projection[-1].weight
    )


def test_no_projection_head_without_the_contrastive_term():
    method = CCEMethod(
        TrainConfig(base_filters=4, method_options={"contrast": False, "contrast_projection_dim": 6})
    )
    model = method.build_model(1, 2)
    assert model.net_a.projection is None and "projection_dim" not in model.net_a.spec["kwargs"]
