"""``python -m train.evaluate --rerank``: the table holds the k-reciprocal re-ranked metrics."""
import json

import torch

from engine.metrics import evaluate
from engine.rerank import RerankParams
from train.checkpoint import save_checkpoint
from train.config import JLMLConfig
from train.data import load_reid_set
from train.evaluate import PYTORCH, main
from train.loop import embed
from train.model import JLML

TINY = dict(height=32, width=16, stripes=4, widths=(4, 8), blocks=(1, 1), feat_dim=16, dropout=0.0)


def test_rerank_flag_scores_re_ranked_distances(tmp_path):
    torch.manual_seed(0)
    model = JLML(JLMLConfig(**TINY), num_classes=8).eval()
    ckpt = save_checkpoint(tmp_path / "last.pt", model, model.cfg, epoch=1, num_classes=8)
    data = load_reid_set("synthetic", height=32, width=16, split_seed=1, num_ids=40, num_test=30)
    q, g = embed(model, data.query_images), embed(model, data.gallery_images)
    args = ["--checkpoint", str(ckpt), "--dataset", "synthetic", "--data-option", "num_ids=40",
            "--data-option", "num_test=30", "--split-seed", "1", "--threads", "1"]
    scored = []
    for flag, rerank in (([], None), (["--rerank"], RerankParams())):
        report = tmp_path / f"eval{len(flag)}.json"
        assert main([*args, *flag, "--json", str(report)]) == 0
        rows = json.loads(report.read_text())["rows"]
        scored.append(rows[PYTORCH])
        assert rows[PYTORCH] == evaluate(q, data.query_pids, data.query_cams, g, data.gallery_pids,
                                         data.gallery_cams, protocol=data.protocol, rerank=rerank)
    assert scored[0] != scored[1]  # the flag changes the ranking here, so ignoring it would show
