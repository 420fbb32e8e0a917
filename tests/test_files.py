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
