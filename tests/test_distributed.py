"""Captioning through Ray Data on a local 2-CPU Ray instance (skipped without Ray)."""

import shutil
import signal
import subprocess
import sys

import pytest

ray = pytest.importorskip("ray")

import bliptk  # noqa: E402
from bliptk.captioning.ray_data import ActorPool, caption_dataset, read_output  # noqa: E402

TIME_LIMIT_S = 240


def ray_job(test):
    """Marks a test that starts a local Ray instance (tens of seconds): ray, and slow; under
    ``pytest -n``, every such test runs in one worker, which starts Ray once."""
    return pytest.mark.xdist_group("ray")(pytest.mark.ray(pytest.mark.slow(test)))


@pytest.fixture(autouse=True)
def time_limit():
    """A hung Ray job fails its test instead of stalling the suite."""

    def expire(signum, frame):
        raise TimeoutError(f"Ray test ran over {TIME_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TIME_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(photos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-photos")
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    (folder / "notes.jpg").write_text("not a photo")
    (folder / "truncated.jpg").write_bytes(photos[0].read_bytes()[:5000])
    return folder


@ray_job
def test_caption_dataset_one_record_per_input_and_resume(tiny, photos, folder, local_ray, tmp_path):
    output = tmp_path / "shards"
    summary = caption_dataset(folder, output=output, model="tiny", pretrained=False, batch_size=2, max_new_tokens=6)
    assert (summary.total, summary.captioned, summary.failed, summary.skipped) == (5, 3, 2, 0)
    records = read_output(output)
    assert sorted(r["path"] for r in records) == sorted(str(p) for p in folder.iterdir())
    for record in records:
        name = record["path"].rsplit("/", 1)[-1]
        if name in ("notes.jpg", "truncated.jpg"):
            assert record["error"]["type"] == "ImageLoadError" and name in record["error"]["message"] and record["caption"] is None
        else:
            alone = tiny.caption(record["path"], max_new_tokens=6)
            assert record["error"] is None and record["token_ids"] == alone.token_ids and record["caption"] == alone.text
            assert record["model"] == "tiny" and record["options"]["max_new_tokens"] == 6
    again = caption_dataset(folder, output=output, model="tiny", pretrained=False, batch_size=2, max_new_tokens=6)
    assert (again.skipped, again.captioned, again.failed) == (3, 0, 2)  # the captions are kept, the failures retried
    assert sorted(r["path"] for r in read_output(output)) == sorted(str(p) for p in folder.iterdir())  # still one each


@ray_job
def test_ray_captions_from_an_onnx_export_as_the_single_process_runner(tiny_export, photos, folder, local_ray, tmp_path):
    output = tmp_path / "onnx-shards"
    summary = caption_dataset(folder, output=output, model=str(tiny_export), batch_size=2, max_new_tokens=6, num_beams=2)
    assert (summary.total, summary.captioned, summary.failed) == (5, 3, 2)
    runner = bliptk.load(tiny_export)
    alone = {r["path"]: r for r in runner.caption_files(folder, batch_size=2, max_new_tokens=6, num_beams=2)}
    by_ray = {r["path"]: r for r in read_output(output)}
    assert by_ray.keys() == alone.keys()
    same = ("caption", "token_ids", "model", "weights", "runtime", "options", "frames")
    for path, record in by_ray.items():
        assert {k: record.get(k) for k in same} == {k: alone[path].get(k) for k in same}, path
        assert (record["error"] or {}).get("type") == (alone[path]["error"] or {}).get("type")
    captioned = [r for r in by_ray.values() if r["error"] is None]
    assert len(captioned) == 3 and all(r["runtime"] == "onnx" and r["token_ids"] for r in captioned)


@ray_job
def test_a_ray_dataset_with_image_bytes(tiny, photos, local_ray, tmp_path):
    dataset = ray.data.from_items([{"path": f"mem://{p.name}", "bytes": p.read_bytes()} for p in photos[:2]])
    output = tmp_path / "parquet"
    summary = caption_dataset(dataset, output=output, model="tiny", pretrained=False, format="parquet", max_new_tokens=5)
    assert summary.captioned == 2 and list(output.glob("*.parquet"))
    by_path = {r["path"]: r for r in read_output(output)}
    assert by_path[f"mem://{photos[0].name}"]["token_ids"] == tiny.caption(photos[0], max_new_tokens=5).token_ids


@ray_job
def test_cli_routes_through_ray(folder, tmp_path):
    output = tmp_path / "cli-shards"
    result = subprocess.run(
        [sys.executable, "-m", "bliptk", "caption", str(folder), "--ray", "--out", str(output), "--model", "tiny", "--max-new-tokens", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "3 captioned, 2 failed, 0 already done (of 5)" in result.stderr
    assert len(read_output(output)) == 5


@ray_job
def test_uris_are_read_through_their_filesystem(tiny, photos, local_ray, tmp_path):
    uris = [photos[1].resolve().as_uri(), (tmp_path / "gone.jpg").as_uri()]
    summary = caption_dataset(uris, output=tmp_path / "uris", model="tiny", pretrained=False, max_new_tokens=5)
    assert (summary.captioned, summary.failed) == (1, 1)
    by_path = {r["path"]: r for r in read_output(tmp_path / "uris")}
    assert by_path[uris[0]]["token_ids"] == tiny.caption(photos[1], max_new_tokens=5).token_ids
    assert by_path[uris[1]]["error"]["type"] == "ImageLoadError" and "gone.jpg" in by_path[uris[1]]["error"]["message"]


@pytest.mark.parametrize(
    "cpus, gpus, num_workers, cpus_per_worker, gpus_per_worker, expected",
    [
        (2, 0, None, None, 0, (1, 1.5)),  # one actor, all but the reading share
        (16, 0, None, None, 0, (3, 4.0)),  # 4-CPU actors on a big node
        (2, 0, 2, None, 0, (2, 0.75)),  # asked-for actors share what is free
        (2, 0, None, 1, 0, (1, 1)),  # two 1-CPU actors would starve the reads
        (32, 4, None, None, 1, (4, 1.0)),  # one actor per GPU
        (32, 4, None, None, 0.5, (8, 1.0)),  # two actors per GPU
    ],
)
def test_the_pool_always_leaves_room_for_reads(cpus, gpus, num_workers, cpus_per_worker, gpus_per_worker, expected):
    pool = ActorPool(num_workers=num_workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
    assert pool.size({"CPU": cpus, "GPU": gpus}) == expected


def test_a_callers_dataset_keeps_a_whole_cpu_for_its_reads():
    assert ActorPool().size({"CPU": 2}, read_cpus=1.0) == (1, 1.0)


def test_bad_pool_options_are_refused(tmp_path):
    with pytest.raises(bliptk.InvalidOptionError, match="cpus_per_worker must be > 0, got 0"):
        ActorPool(cpus_per_worker=0)
    with pytest.raises(bliptk.InvalidOptionError, match="num_workers"):
        ActorPool(num_workers=0)
    with pytest.raises(bliptk.InvalidOptionError, match="format must be one of jsonl, parquet"):
        caption_dataset(tmp_path, output=tmp_path / "out", model="tiny", format="csv")


@ray_job
def test_a_folder_uri_is_listed_and_read_by_ray(tiny, folder, local_ray, tmp_path):
    summary = caption_dataset(folder.resolve().as_uri(), output=tmp_path / "uri-folder", model="tiny", pretrained=False, max_new_tokens=4)
    assert (summary.total, summary.captioned, summary.failed) == (5, 3, 2)
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in read_output(tmp_path / "uri-folder")}
    assert by_name["truncated.jpg"]["error"]["type"] == "ImageLoadError"
    photo = next(p for p in folder.iterdir() if p.name.startswith("COCO"))
    assert by_name[photo.name]["token_ids"] == tiny.caption(photo, max_new_tokens=4).token_ids


@ray_job
def test_torn_shards_of_a_killed_job_are_captioned_again(tiny, photos, local_ray, tmp_path):
    output = tmp_path / "torn"
    caption_dataset(photos[:2], output=output, model="tiny", pretrained=False, format="parquet", max_new_tokens=4)
    (output / "killed.parquet").write_bytes(b"PAR1 cut short")
    (output / "killed.json").write_text('{"path": "a.jpg", "capt')
    assert sorted(r["path"] for r in read_output(output)) == sorted(str(p) for p in photos[:2])
    again = caption_dataset(photos[:3], output=output, model="tiny", pretrained=False, format="parquet", max_new_tokens=4)
    assert (again.skipped, again.captioned) == (2, 1)


@ray_job
def test_a_rerun_retries_failures_and_reuses_only_the_same_weights(tiny, photos, local_ray, tmp_path):
    inputs, output = tmp_path / "inputs", tmp_path / "retry"
    inputs.mkdir()
    shutil.copy(photos[0], inputs)
    (inputs / "later.jpg").write_text("not yet a photo")
    first = caption_dataset(inputs, output=output, model="tiny", pretrained=False, max_new_tokens=4)
    assert (first.captioned, first.failed) == (1, 1)
    shutil.copy(photos[1], inputs / "later.jpg")  # the bad input is mended
    again = caption_dataset(inputs, output=output, model="tiny", pretrained=False, max_new_tokens=4)
    assert (again.skipped, again.captioned, again.failed) == (1, 1, 0)
    records = {r["path"].rsplit("/", 1)[-1]: r for r in read_output(output)}
    assert len(read_output(output)) == 2 and records["later.jpg"]["error"] is None  # the failure is superseded
    assert records["later.jpg"]["token_ids"] == tiny.caption(photos[1], max_new_tokens=4).token_ids
    assert records["later.jpg"]["weights"] == tiny.weights.as_dict()
    other = caption_dataset(inputs, output=output, model="tiny", pretrained=False, weights_seed=1, max_new_tokens=4)
    assert (other.skipped, other.captioned) == (0, 2)  # other weights: nothing reused
    assert {r["weights"]["seed"] for r in read_output(output)} == {0, 1}
