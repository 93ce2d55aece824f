"""jvm/localfs: Hadoop's local file system with chmod and the link check done in-process.

Every test goes through the test session's own JVM, so it checks the class the pipeline's
Delta commits and streaming checkpoints really use, and the promises Delta's log store
needs from it: permissions as asked, a rename that refuses to overwrite, links still seen.
"""
from __future__ import annotations

import os
import stat

import pytest

from pipelines.core.session import LOCALFS_JAR, local_fs_conf
from pipelines.core.settings import spark_jars_dir


def test_conf_names_the_jar_and_both_file_system_apis():
    jars = ["/j/delta-spark.jar", f"/j/{LOCALFS_JAR}"]
    conf = local_fs_conf(jars)
    assert conf["spark.hadoop.fs.file.impl"] == "io.billing.localfs.NioLocalFileSystem"
    assert conf["spark.hadoop.fs.AbstractFileSystem.file.impl"] == "io.billing.localfs.NioLocalFs"
    assert conf["spark.driver.extraClassPath"] == conf["spark.executor.extraClassPath"] == f"/j/{LOCALFS_JAR}"


def test_conf_is_empty_without_the_jar():
    assert local_fs_conf(["/j/delta-spark.jar", "/j/lakehouse-localfs.jar.bak"]) == {}


@pytest.fixture(scope="module")
def hadoop(spark):
    jvm = spark._jvm
    conf = spark._jsparkSession.sessionState().newHadoopConf()
    return jvm, conf, spark.sparkContext._gateway


def _path(jvm, p) -> object:
    return jvm.org.apache.hadoop.fs.Path(f"file:{p}")


def _permission(jvm, mode: int):
    return jvm.org.apache.hadoop.fs.permission.FsPermission(jvm.java.lang.Short(str(mode)))


def test_the_session_uses_it_for_both_apis(hadoop):
    jvm, conf, _ = hadoop
    assert (spark_jars_dir() / LOCALFS_JAR).exists(), "run `make setup`: it builds jvm/localfs"
    fs = _path(jvm, "/").getFileSystem(conf)
    assert fs.getClass().getName() == "io.billing.localfs.NioLocalFileSystem"
    fc = jvm.org.apache.hadoop.fs.FileContext.getFileContext(jvm.java.net.URI("file:///"), conf)
    assert fc.getDefaultFileSystem().getClass().getName() == "io.billing.localfs.NioLocalFs"


def test_files_and_folders_get_the_permission_asked(hadoop, tmp_path):
    jvm, conf, _ = hadoop
    fs = _path(jvm, "/").getFileSystem(conf)
    file, folder = tmp_path / "f.json", tmp_path / "d" / "e"
    out = fs.create(_path(jvm, file), _permission(jvm, 0o640), True, 4096, 1, 1 << 20, None)
    out.write(bytearray(b"{}"))
    out.close()
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o640
    assert file.read_bytes() == b"{}"
    assert fs.mkdirs(_path(jvm, folder), _permission(jvm, 0o750))
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o750
    fs.setPermission(_path(jvm, file), _permission(jvm, 0o604))
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o604


def test_a_rename_refuses_to_overwrite(hadoop, tmp_path):
    """Delta's log store commits by renaming a temporary file onto the next version: the
    rename must fail when that version exists, or two writers could both commit it."""
    jvm, conf, gateway = hadoop
    fc = jvm.org.apache.hadoop.fs.FileContext.getFileContext(jvm.java.net.URI("file:///"), conf)
    flags = jvm.java.util.EnumSet.of(jvm.org.apache.hadoop.fs.CreateFlag.CREATE)
    no_options = gateway.new_array(jvm.org.apache.hadoop.fs.Options.CreateOpts, 0)
    no_rename_options = gateway.new_array(jvm.org.apache.hadoop.fs.Options.Rename, 0)
    for name, body in (("a.tmp", b"first"), ("b.tmp", b"second")):
        out = fc.create(_path(jvm, tmp_path / name), flags, no_options)
        out.write(bytearray(body))
        out.close()
    fc.rename(_path(jvm, tmp_path / "a.tmp"), _path(jvm, tmp_path / "00.json"), no_rename_options)
    with pytest.raises(Exception, match="FileAlreadyExistsException|already exists"):
        fc.rename(_path(jvm, tmp_path / "b.tmp"), _path(jvm, tmp_path / "00.json"), no_rename_options)
    assert (tmp_path / "00.json").read_bytes() == b"first"
    assert (tmp_path / "b.tmp").read_bytes() == b"second"
    assert not (tmp_path / "a.tmp").exists()


def test_link_status_is_hadoops_own(hadoop, tmp_path):
    """Whatever Hadoop's own local file system answers about a path (a file, a folder, a
    link named with or without the scheme), this one answers the same."""
    jvm, conf, _ = hadoop
    ours = _path(jvm, "/").getFileSystem(conf)
    hadoops = jvm.org.apache.hadoop.fs.RawLocalFileSystem()
    hadoops.initialize(jvm.java.net.URI("file:///"), conf)
    target = tmp_path / "target.txt"
    target.write_text("x" * 5)
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "folder").mkdir()
    paths = [_path(jvm, tmp_path / name) for name in ("target.txt", "link", "folder")]
    paths.append(jvm.org.apache.hadoop.fs.Path(str(tmp_path / "link")))   # no scheme: Hadoop sees the link
    seen = []
    for path in paths:
        mine, theirs = ours.getFileLinkStatus(path), hadoops.getFileLinkStatus(path)
        answer = (mine.isSymlink(), mine.isDirectory(), mine.getLen())
        assert answer == (theirs.isSymlink(), theirs.isDirectory(), theirs.getLen()), path.toString()
        seen.append(answer)
    assert seen[0] == (False, False, 5) and seen[2][:2] == (False, True) and seen[3][0] is True
    for fs in (ours, hadoops):
        with pytest.raises(Exception, match="FileNotFoundException|does not exist"):
            fs.getFileLinkStatus(_path(jvm, tmp_path / "missing"))
