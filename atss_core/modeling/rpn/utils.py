"""Shape helpers shared by the ATSS loss and post-processor."""


def flatten_like_anchors(prediction, values_per_anchor):
    """``(N, A*K, H, W)`` head output -> ``(N, H*W*A, K)``, ordered like the anchors (row-major
    y, x, then the A anchors of a location). Free for channels_last outputs; one copy for NCHW."""
    n, channels, height, width = prediction.shape
    prediction = prediction.view(n, channels // values_per_anchor, values_per_anchor, height, width)
    return prediction.permute(0, 3, 4, 1, 2).reshape(n, -1, values_per_anchor).contiguous()
