package io.billing.localfs;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.Set;

import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RawLocalFileSystem;
import org.apache.hadoop.fs.permission.FsPermission;

/**
 * Hadoop's local file system without a child process per file operation.
 *
 * <p>Without Hadoop's native library (not published to Maven Central), RawLocalFileSystem
 * runs {@code chmod} in a child process for every file it creates with a permission, and
 * {@code readlink} twice for every rename. Delta's commits and Spark's streaming checkpoints
 * create and rename files on every micro-batch, so a local run forked about 18 processes a
 * second, at 16 ms each (bench/RESULTS.md, "One process per file operation"). Java's own
 * file API does the same two things in-process.
 *
 * <p>Behaviour is unchanged: a path that is a symbolic link, a sticky bit, or a file system
 * without POSIX permissions goes to Hadoop's own code.
 */
public class NioRawLocalFileSystem extends RawLocalFileSystem {

  @Override
  public void setPermission(Path p, FsPermission permission) throws IOException {
    Set<PosixFilePermission> posix = toPosix(permission);
    if (posix == null) {
      super.setPermission(p, permission);
      return;
    }
    try {
      Files.setPosixFilePermissions(pathToFile(p).toPath(), posix);
    } catch (UnsupportedOperationException e) {
      super.setPermission(p, permission);
    }
  }

  /**
   * Hadoop asks {@code readlink} whether the path is a link, and for any path that is not
   * (every path this project writes) returns {@link #getFileStatus}: so does this, after
   * asking Java.
   */
  @Override
  public FileStatus getFileLinkStatus(Path f) throws IOException {
    if (Files.isSymbolicLink(pathToFile(f).toPath())) {
      return super.getFileLinkStatus(f);
    }
    return getFileStatus(f);
  }

  /** The permission as POSIX bits, or null when it has a bit POSIX sets cannot carry. */
  static Set<PosixFilePermission> toPosix(FsPermission permission) {
    // Without the sticky bit, FsPermission's string is the nine "rwxr-x---" characters
    // PosixFilePermissions reads.
    return permission.getStickyBit() ? null : PosixFilePermissions.fromString(permission.toString());
  }
}
