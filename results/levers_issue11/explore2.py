"""Split-0 lever runs of the second issue-11 session, one run per call (records: explore2_split0.jsonl).

From the checkout: python results/levers_issue11/explore2.py NAME --split 0 --mode plain|pretrain|joint
    --extra none|prid_all|viper_all|syn:N [--epochs N --jitter J --erase P --cfg JSON]; see RESULTS.md.
"""
import argparse, json, time, sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout
from train.config import JLMLConfig
from train.loop import TrainOptions, fit, evaluate_model
from train.data import load_reid_set
from train.data.combine import combine_train_sets, everyone
from train.runner import augment_factory
from train.data.single_shot import load_prid2011, load_viper
from train.data.datasets import resolve_root

def all_of(name, h, w):
    """Every person of a real set as training ids (the loaders' split, then combine.everyone)."""
    if name == "prid2011":
        s = load_prid2011(resolve_root("prid2011", None), height=h, width=w, num_train=199, num_test=1,
                          cam_a_only_train=True, progress=False)
    else:
        s = load_viper(resolve_root("viper", None), height=h, width=w, num_train=631, num_test=1, progress=False)
    return everyone(s)

p = argparse.ArgumentParser()
p.add_argument("name"); p.add_argument("--dataset", default="viper"); p.add_argument("--split", type=int, default=0)
p.add_argument("--mode", default="joint", choices=["joint", "pretrain", "plain"])
p.add_argument("--extra", default="prid_all")  # prid_all | prid_shared | viper_all | none | syn:N
p.add_argument("--epochs", type=int, default=40); p.add_argument("--pre-epochs", type=int, default=30)
p.add_argument("--lr", type=float, default=2e-3); p.add_argument("--bs", type=int, default=32)
p.add_argument("--jitter", type=float, default=0.0); p.add_argument("--erase", type=float, default=0.5)
p.add_argument("--cfg", default="{}"); p.add_argument("--wd", type=float, default=5e-4)
a = p.parse_args()
torch.set_num_threads(1)
cpu0 = time.process_time()
base = {"widths": (16, 32, 64, 128), "feat_dim": 256, "height": 128, "dropout": 0.1, "bnneck": True,
        "width": 48 if a.dataset == "viper" else 64}
cfg = JLMLConfig(**{**base, **json.loads(a.cfg)})
target = load_reid_set(a.dataset, height=cfg.height, width=cfg.width, split_seed=a.split, progress=False)
extras = []
for e in a.extra.split("+"):
    if e == "prid_all": extras.append(all_of("prid2011", cfg.height, cfg.width))
    elif e == "viper_all": extras.append(all_of("viper", cfg.height, cfg.width))
    elif e == "prid_shared": extras.append(load_reid_set("prid2011", height=cfg.height, width=cfg.width, num_train=199, num_test=1, progress=False))
    elif e.startswith("syn:"):
        n = int(e[4:]); extras.append(load_reid_set("synthetic", height=cfg.height, width=cfg.width, num_ids=n + 2, num_test=2, seed=7))
out = Path("runs/exp") / a.name / f"split{a.split}"
aug = augment_factory(True, {"jitter": a.jitter, "erase_prob": a.erase})
opts = TrainOptions(epochs=a.epochs, batch_size=a.bs, optimizer="adam", lr=a.lr, seed=a.split, progress=False, weight_decay=a.wd)
init = None
if a.mode == "pretrain" and extras:
    pre = combine_train_sets(extras)
    r = fit(cfg, pre, TrainOptions(epochs=a.pre_epochs, batch_size=a.bs, optimizer="adam", lr=a.lr, seed=0, progress=False, weight_decay=a.wd),
            out / "pretrain", make_augment=aug, overwrite=True)
    init = r.model.state_dict()
    data = target
elif a.mode == "joint" and extras:
    data = combine_train_sets([target] + extras)
else:
    data = target
print(data.describe(), flush=True)
r = fit(cfg, data, opts, out, make_augment=aug, init=init, overwrite=True)
m = evaluate_model(r.model, target)
rec = {"name": a.name, "args": vars(a), "metrics": m, "cpu_s": time.process_time() - cpu0,
       "train_acc": r.history[-1].get("acc")}
(out / "metrics.json").write_text(json.dumps(rec, indent=1))
print(json.dumps({"name": a.name, "split": a.split, "r1": round(100*m["rank1"], 1), "mAP": round(100*m["mAP"], 1), "cpu_s": round(rec["cpu_s"]), "last": r.history[-1]}), flush=True)
