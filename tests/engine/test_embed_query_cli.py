"""`python -m engine.embed` and `python -m engine.query` in-process: labels, equality with the Embedder,
ranked lists, the drawing, and bad input (exit 2)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from engine import Embedder
from engine.embed import labels, market_label
from engine.embed import main as embed_main
from engine.errors import ArtifactError
from engine.gallery import Gallery, read_gallery_file
from engine.images import list_images, load_images
from engine.query import main as query_main
from engine.query import resolve_rows
from engine.search.file import legacy_paths_file


@pytest.fixture
def market_folder(tmp_path, make_images):
    """12 PNG crops of 6 ids on cameras 1 and 2, Market-named, half of them in a subfolder."""
    folder = tmp_path / "crops"
    (folder / "sub").mkdir(parents=True)
    for n, pixels in enumerate(make_images(12, seed=3)):
        pid, cam = n // 2 + 1, n % 2 + 1
        where = folder / "sub" if n % 3 == 0 else folder
        Image.fromarray(pixels).save(where / f"{pid:04d}_c{cam}s1_{n:06d}_00.png")
    return folder


def test_market_names_give_ids_and_cameras(tmp_path):
    assert market_label(tmp_path / "0002_c1s1_000451_03.jpg") == (2, 1)
    assert market_label(tmp_path / "-1_c3_f0046985.jpg") == (-1, 3)
    assert market_label(tmp_path / "person.jpg") is None


def test_embed_writes_the_in_process_gallery_and_row_paths(market_folder, artifact_dir, spec, tmp_path):
    out = tmp_path / "g.npz"
    assert embed_main([str(market_folder), "--artifact", str(artifact_dir), "--out", str(out), "--no-progress"]) == 0
    paths = list_images(market_folder)
    with Embedder(artifact_dir, backend="ort", device="cpu") as embedder:
        expected = embedder(load_images(paths, spec.height, spec.width)[0])
    header, arrays = read_gallery_file(out)
    np.testing.assert_array_equal(arrays["embeddings"], expected)
    assert arrays["ids"].tolist() == [market_label(p)[0] for p in paths]
    assert arrays["cams"].tolist() == [market_label(p)[1] for p in paths]
    assert arrays["paths"].tolist() == [str(p.relative_to(market_folder)) for p in paths]
    assert header["images_root"] == str(market_folder.resolve())
    assert sorted(f.name for f in tmp_path.iterdir() if f.is_file()) == ["g.npz"]  # one file, no sidecar


def _query_lines(query, out, artifact_dir, capsys, *extra):
    capsys.readouterr()
    assert query_main([str(query), "--gallery", str(out), "--artifact", str(artifact_dir), "-k", "20",
                       "--no-progress", *extra]) == 0
    return [line.split() for line in capsys.readouterr().out.splitlines()[2:] if line.startswith("   ")]


def test_rows_added_without_images_keep_the_gallery_file_whole(market_folder, artifact_dir, tmp_path,
                                                               make_images, capsys):
    """What the server's gallery_add does (load, add pixels' embeddings, save): the query CLI still
    names every row, "-" for the added ones, and draws (it raised IndexError when the paths lived in a
    sidecar that only engine.embed wrote)."""
    out = tmp_path / "g.npz"
    assert embed_main([str(market_folder), "--artifact", str(artifact_dir), "--out", str(out), "--no-progress"]) == 0
    with Embedder(artifact_dir, backend="ort", device="cpu") as embedder:
        added = embedder(make_images(3, seed=9))
    gallery = Gallery.load(out)
    gallery.add(added, [900, 901, 902], [5, 5, 5])
    gallery.save(out)
    assert Gallery.load(out).paths[-3:] == ["", "", ""] and len(Gallery.load(out).paths) == 15
    query = next(market_folder.glob("*.png"))
    rows = _query_lines(query, out, artifact_dir, capsys, "--png", str(tmp_path / "r.png"))
    assert len(rows) == 15 and {r[5] for r in rows if int(r[1]) >= 900} == {"-"}
    assert {r[5] for r in rows if int(r[1]) < 900} == {str(p.relative_to(market_folder))
                                                       for p in list_images(market_folder)}
    assert (tmp_path / "r.png").stat().st_size > 0


def test_an_older_gallery_with_a_paths_sidecar_is_still_read(market_folder, artifact_dir, tmp_path, capsys):
    """A gallery written before the paths moved into the file, grown later by the old server (so its
    sidecar lists fewer rows than the file holds): the first rows keep their images, the rest show "-"."""
    out = tmp_path / "old.npz"
    paths = list_images(market_folder)
    with Embedder(artifact_dir, backend="ort", device="cpu") as embedder:
        emb = embedder(load_images(paths, 32, 16)[0])
    gallery = Gallery(emb.shape[1])
    gallery.add(emb, labels(market_folder, paths)[0])
    gallery.save(out)
    listed = [str(p.relative_to(market_folder)) for p in paths[:10]]
    legacy_paths_file(out).write_text(json.dumps({"root": str(market_folder), "paths": listed}))
    header, arrays = read_gallery_file(out)
    assert arrays["paths"].tolist() == listed + ["", ""] and header["images_root"] == str(market_folder)
    rows = _query_lines(paths[0], out, artifact_dir, capsys)
    assert sorted(r[5] for r in rows) == sorted(listed + ["-", "-"])
    legacy_paths_file(out).write_text(json.dumps({"root": "x", "paths": ["a"] * 13}))  # more rows than the file
    with pytest.raises(ArtifactError, match=r"old.npz.paths.json lists 13 images, but gallery .* has 12 rows"):
        read_gallery_file(out)


@pytest.mark.parametrize(("text", "why"), [("{not json", "JSONDecodeError"), ('["a"]', "TypeError"),
                                          ('{"root": "x"}', "KeyError"), ('{"root": "x", "paths": [1]}', "TypeError"),
                                          (b"\xff\xfe", "UnicodeDecodeError")])
def test_a_corrupt_or_foreign_paths_sidecar_is_an_error_naming_it(market_folder, artifact_dir, tmp_path, capsys,
                                                                  text, why):
    """Another gallery's or a corrupt .paths.json gave wrong image names or a JSONDecodeError traceback."""
    out = tmp_path / "old.npz"
    gallery = Gallery(4)
    gallery.add(np.eye(4, dtype=np.float32), np.arange(4))
    gallery.save(out)
    sidecar = legacy_paths_file(out)
    sidecar.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ArtifactError, match=rf"old.npz.paths.json, the image list of gallery .* \({why}"):
        read_gallery_file(out)
    query = str(next(market_folder.glob("*.png")))
    capsys.readouterr()
    assert query_main([query, "--gallery", str(out), "--artifact", str(artifact_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(sidecar) in err and "delete or rename" in err


def test_csv_labels_and_index_ids(market_folder, tmp_path):
    paths = list_images(market_folder)
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "id", "cam"])
        writer.writerows([str(p.relative_to(market_folder)), 100 + i, 7] for i, p in enumerate(paths))
    ids, cams = labels(market_folder, paths, csv_path=table)
    assert ids.tolist() == list(range(100, 112)) and set(cams.tolist()) == {7}
    ids, cams = labels(market_folder, paths, index_ids=True)
    assert ids.tolist() == list(range(12)) and set(cams.tolist()) == {-1}


def test_other_names_without_labels_exit_2(tmp_path, artifact_dir, make_images, capsys):
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.fromarray(make_images(1)[0]).save(folder / "person.png")
    assert embed_main([str(folder), "--artifact", str(artifact_dir), "--out", str(tmp_path / "g.npz")]) == 2
    assert "not Market-style" in capsys.readouterr().err and not (tmp_path / "g.npz").exists()
    assert embed_main([str(tmp_path / "missing"), "--artifact", str(artifact_dir), "--out",
                       str(tmp_path / "g.npz")]) == 2


def test_query_ranks_itself_first_and_draws(market_folder, artifact_dir, tmp_path, capsys):
    out, png = tmp_path / "g.npz", tmp_path / "ranked.png"
    assert embed_main([str(market_folder), "--artifact", str(artifact_dir), "--out", str(out), "--no-progress"]) == 0
    query = sorted(market_folder.rglob("0002_c2*"))[0]  # in sub/
    capsys.readouterr()
    assert query_main([str(query), "--gallery", str(out), "--artifact", str(artifact_dir), "-k", "4",
                       "--png", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"query {query} (id 2, cam 2)")  # a random model may miss id 2's other crop
    first = lines[2].split()  # the query itself: its id from its own camera, which Market scoring ignores
    assert first[:3] == ["1", "2", "2"] and float(first[3]) < 1e-6 and first[4] == "junk"
    assert first[5] == str(query.relative_to(market_folder)) and len([line for line in lines if line.startswith("   ")]) == 4
    with Image.open(png) as drawn:
        assert drawn.width > drawn.height > 50


def test_query_without_gallery_or_with_bad_k_exits_2(market_folder, artifact_dir, capsys):
    image = str(next(market_folder.glob("*.png")))
    assert query_main([image, "--artifact", str(artifact_dir)]) == 2
    with pytest.raises(SystemExit) as stop:
        query_main([image, "--artifact", str(artifact_dir), "--gallery", "g.npz", "-k", "0"])
    assert stop.value.code == 2
    assert "argument -k: expected a whole number of at least 1, got 0" in capsys.readouterr().err


def test_resolve_rows_tells_rows_of_one_id_apart():
    gallery = np.array([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
    ids = np.array([5, 5, 5, 9])
    query = np.zeros(2)
    g = Gallery(2)
    g.add(gallery, ids)
    dist, got = g.search(query[None].astype(np.float32), 5)
    rows = resolve_rows(query, dist[0], got[0], gallery, ids)
    assert rows.tolist() == [0, 2, 3, 1, -1]


def test_embed_takes_a_precision_and_a_missing_one_lists_what_the_artefact_has(market_folder, artifact_dir,
                                                                                  spec, tmp_path, capsys):
    out = tmp_path / "g.npz"
    argv = [str(market_folder), "--artifact", str(artifact_dir), "--out", str(out), "--no-progress"]
    assert embed_main([*argv, "--backend", "ort", "--device", "cpu", "--precision", "fp16"]) == 0
    with Embedder(artifact_dir, backend="ort", device="cpu", precision="fp16") as embedder:
        expected = embedder(load_images(list_images(market_folder), spec.height, spec.width)[0])
    np.testing.assert_array_equal(read_gallery_file(out)[1]["embeddings"], expected)
    capsys.readouterr()
    assert embed_main([*argv, "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert "precision 'int8'" in err and "the artefact has ort: fp32, fp16; trt: nothing" in err


def test_a_folder_of_queries_gets_one_png_each_flags_and_a_score_line(market_folder, artifact_dir, tmp_path,
                                                                      make_images, capsys):
    """torchreid's visrank: one PNG per query, labels readable at native size; a query with no true
    match in its top k is flagged; labelled queries end with Rank-1/mAP over the whole gallery."""
    from engine.metrics import evaluate

    out = tmp_path / "g.npz"
    assert embed_main([str(market_folder), "--artifact", str(artifact_dir), "--out", str(out), "--no-progress"]) == 0
    queries = tmp_path / "queries"
    queries.mkdir()
    for src in sorted(market_folder.rglob("000[123]_c1*.png")):
        (queries / src.name).write_bytes(src.read_bytes())
    Image.fromarray(make_images(1, seed=7)[0]).save(queries / "0099_c1s1_000001_00.png")  # id not in the gallery
    capsys.readouterr()
    assert query_main([str(queries), "--gallery", str(out), "--artifact", str(artifact_dir), "-k", "4",
                       "--png", str(tmp_path / "ranked"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "query " + str(queries / "0099_c1s1_000001_00.png") + " (id 99, cam 1)  [no true match in the top 4]" \
        in printed.splitlines()
    paths = sorted(queries.iterdir())
    with Embedder(artifact_dir, backend="ort", device="cpu") as embedder:
        q = embedder(load_images(paths, 32, 16)[0])
    _, arrays = read_gallery_file(out)
    m = evaluate(q, [market_label(p)[0] for p in paths], [1] * 4, arrays["embeddings"], arrays["ids"], arrays["cams"])
    assert f"Rank-1 {100 * m['rank1']:.2f}" in printed and f"mAP {100 * m['mAP']:.2f}  over 3 of 4 queries" in printed
    drawn = sorted((tmp_path / "ranked").iterdir())
    assert [d.name for d in drawn] == [f"{n:03d}_{p.stem}.png" for n, p in enumerate(paths, 1)]
    for png in drawn:
        with Image.open(png) as image:
            assert image.size == (5 * 150, 330)  # k + 1 cells of 150 x 330 px: 9 pt labels at 100 dpi
    assert query_main([str(queries), "--gallery", str(out), "--artifact", str(artifact_dir),
                       "--png", str(tmp_path / "one.png")]) == 2
    assert "names one file, got 4 queries" in capsys.readouterr().err


def test_query_with_a_huge_k_lists_the_gallery_once(market_folder, artifact_dir, tmp_path, capsys):
    """-k 10^9 once asked the Gallery for 10^9 columns per query; the list stops at the gallery's rows
    (and so does the drawing)."""
    out, png = tmp_path / "g.npz", tmp_path / "ranked.png"
    assert embed_main([str(market_folder), "--artifact", str(artifact_dir), "--out", str(out), "--no-progress"]) == 0
    query = sorted(market_folder.rglob("0002_c2*"))[0]
    capsys.readouterr()
    assert query_main([str(query), "--gallery", str(out), "--artifact", str(artifact_dir), "-k", str(10**9),
                       "--no-progress", "--png", str(png)]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("   ")]
    assert len(listed) == 12
    with Image.open(png) as drawn, Image.open(_drawn_with_k(query, out, artifact_dir, tmp_path, 12)) as full:
        assert drawn.size == full.size  # 12 results drawn, not 10^9 or 2048


def _drawn_with_k(query, out, artifact_dir, tmp_path, k: int):
    png = tmp_path / f"k{k}.png"
    assert query_main([str(query), "--gallery", str(out), "--artifact", str(artifact_dir), "-k", str(k),
                       "--no-progress", "--png", str(png)]) == 0
    return png


def test_a_gallery_embedded_by_another_model_is_refused_by_query(market_folder, artifact_dir, other_artifact_dir,
                                                                  spec, tmp_path, capsys):
    """A gallery of another model of the same dimension once gave meaningless ranks with exit 0."""
    from engine.search.file import model_fingerprint
    from engine.spec import ModelSpec

    out = tmp_path / "g.npz"
    assert embed_main([str(market_folder), "--artifact", str(artifact_dir), "--out", str(out), "--no-progress"]) == 0
    ours, theirs = model_fingerprint(spec), model_fingerprint(ModelSpec.load(other_artifact_dir))
    assert read_gallery_file(out)[0]["model_fingerprint"] == ours != theirs
    query = str(sorted(market_folder.rglob("0002_c2*"))[0])
    capsys.readouterr()
    argv = [query, "--gallery", str(out), "--artifact", str(other_artifact_dir), "--no-progress"]
    assert query_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ours[:16] in err and theirs[:16] in err and "--allow-other-model" in err
    assert query_main([*argv, "--allow-other-model"]) == 0
    assert query_main([query, "--gallery", str(out), "--artifact", str(artifact_dir), "--no-progress"]) == 0


def test_a_gallery_without_a_fingerprint_is_searched_with_a_warning(market_folder, artifact_dir, tmp_path, caplog):
    import logging

    out = tmp_path / "g.npz"
    assert embed_main([str(market_folder), "--artifact", str(artifact_dir), "--out", str(out), "--no-progress"]) == 0
    gal = Gallery.load(out)
    gal.model_fingerprint = None  # as written before fingerprints
    gal.save(out)
    query = str(sorted(market_folder.rglob("0002_c2*"))[0])
    with caplog.at_level(logging.WARNING, logger="engine.gallery"):
        assert query_main([query, "--gallery", str(out), "--artifact", str(artifact_dir), "--no-progress"]) == 0
    assert "records no model fingerprint" in caplog.text


def test_embed_publishes_one_file_or_nothing(market_folder, artifact_dir, tmp_path, monkeypatch, capsys):
    """engine.embed once replaced gallery.npz and then failed writing paths.json (half-published): the
    rows and their images are one .npz now, written atomically, so a failed write leaves the old
    gallery whole and nothing beside it."""
    import errno

    from engine.search import file

    out = tmp_path / "g.npz"
    assert embed_main([str(market_folder), "--artifact", str(artifact_dir), "--out", str(out), "--no-progress"]) == 0
    before = out.read_bytes()

    def disk_full(fh, **arrays):
        fh.write(b"PK half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file.np, "savez", disk_full)
    capsys.readouterr()
    assert embed_main([str(market_folder), "--index-ids", "--artifact", str(artifact_dir), "--out", str(out),
                       "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"writing {out} failed: No space left" in err
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["crops", "g.npz"]


def test_query_names_a_sharded_manifest_instead_of_misreading_it(tmp_path, artifact_dir, capsys):
    manifest = tmp_path / "g.json"
    manifest.write_text("{}")
    image = tmp_path / "q.png"
    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(image)
    assert query_main([str(image), "--gallery", str(manifest), "--artifact", str(artifact_dir)]) == 2
    assert "is a sharded gallery's manifest; query the server" in capsys.readouterr().err
