from pathlib import Path

import pytest

import bliptk


def test_image_files_by_extension_sorted(tmp_path):
    for name in ["b.JPG", "a.png", "c.txt", "d.webp"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.jpeg").write_bytes(b"x")
    assert [p.name for p in bliptk.image_files(tmp_path)] == ["a.png", "b.JPG", "d.webp"]
    assert [p.name for p in bliptk.image_files(tmp_path, recursive=True)] == ["a.png", "b.JPG", "d.webp", "e.jpeg"]
    assert [p.name for p in bliptk.image_files(tmp_path / "*.png")] == ["a.png"]
    assert [p.name for p in bliptk.image_files(f"{tmp_path}/**/*.jpeg", recursive=True)] == ["e.jpeg"]


def test_example_files_are_found_wherever_python_started(tmp_path, monkeypatch):
    notebooks = Path(__file__).parent.parent / "notebooks"
    for start in (notebooks, notebooks.parent, tmp_path):
        monkeypatch.chdir(start)
        assert bliptk.example_path("images/woman-with-cake.jpg").resolve() == notebooks / "images" / "woman-with-cake.jpg"
    monkeypatch.setenv("BLIPTK_EXAMPLES", str(tmp_path))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "own.jpg").write_bytes(b"x")
    assert bliptk.example_path("images/own.jpg") == tmp_path / "images" / "own.jpg"
    with pytest.raises(bliptk.ExampleNotFoundError, match=r"example 'images/none.jpg' not found in .*set BLIPTK_EXAMPLES"):
        bliptk.example_path("images/none.jpg")
