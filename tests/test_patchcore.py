import torch

from adkd.methods.patchcore import PatchCoreNetwork


def _net(**kw) -> PatchCoreNetwork:
    torch.manual_seed(0)
    return PatchCoreNetwork("mobilenet_v2", pretrained=False, **kw).eval()


def test_nearest_distance_is_exact():
    net = _net()
    net.memory_bank = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    d = net.nearest_distance(torch.tensor([[0.0, 0.0], [3.0, 0.0], [6.0, 8.0]]))
    assert torch.allclose(d, torch.tensor([0.0, 3.0, 5.0]), atol=1e-5)


def test_a_memorised_image_scores_zero_and_another_does_not():
    net = _net()
    seen, unseen = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        net.memory_bank = net.flatten(net(seen))
        assert net(seen).shape[1] == net.dim == 32 + 96  # layers 2 and 3 of mobilenet_v2, concatenated
        scale = float(net.flatten(net(seen)).norm(dim=1).mean())  # random weights: small features
        assert float(net.anomaly_map(seen).max()) < 1e-2 * scale
        assert float(net.anomaly_map(unseen).mean()) > 0.1 * scale


def test_memory_bank_travels_in_the_state_dict_at_its_own_size():
    net = _net()
    net.memory_bank = torch.randn(7, net.dim)
    fresh = _net()
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh.memory_bank, net.memory_bank)


def test_embedding_dim_pools_channels():
    net = _net(embedding_dim=64)
    with torch.no_grad():
        assert net(torch.rand(2, 3, 64, 64)).shape == (2, 64, 8, 8)


def test_the_coreset_selects_what_anomalibs_k_center_greedy_selects():
    import numpy as np
    from anomalib.models.components import KCenterGreedy

    from adkd.methods.patchcore.coreset import greedy_coreset

    features = torch.randn(3000, 96) * torch.linspace(0.1, 2, 96)  # anisotropic, as CNN features are
    torch.manual_seed(1), np.random.seed(1)
    reference = KCenterGreedy(features, sampling_ratio=0.05).select_coreset_idxs()
    torch.manual_seed(1), np.random.seed(1)
    ours = greedy_coreset(features, len(reference), progress=False).tolist()
    assert len(set(ours)) == len(ours) == 150 and ours == reference
