/*
 * atoll prepare-root: the static PID-1 step that boots an ostree deployment
 * without an initramfs.
 *
 * The kernel mounts the physical root (the disk's ext4, drivers built in) and
 * runs this program as PID 1, because ostree's deploy wrote
 * init=/ostree/boot.N/.../usr/lib/ostree/ostree-prepare-root on the command
 * line. Debian's own ostree-prepare-root is dynamically linked and, as PID 1
 * on the physical root, cannot find its ELF interpreter; this one is linked
 * statically and does what ostree's does in that position:
 *
 *   1. mount /proc on the physical root, read ostree= from the command line
 *      and resolve it to the deployment directory;
 *   2. bind-mount the deployment onto itself, the physical root onto its
 *      /sysroot, the stateroot's var onto its /var and the physical /boot
 *      onto its /boot (where ostree keeps the boot entries);
 *   3. bind /usr onto itself read-only;
 *   4. mount a tmpfs on /run holding /run/ostree-booted (ostree's marker that
 *      this system was booted from a deployment; systemd keeps an existing
 *      /run mount), and mask ostree-system-generator for this boot (below);
 *   5. move the deployment to / and chroot into it, then exec systemd.
 *
 * ostree-system-generator is what completes ostree's own prepare-root when
 * systemd runs in an initramfs: it writes var.mount (the stateroot's var on
 * /var, unless /etc/fstab mounts /var), creates /run/ostree-booted, and makes
 * local-fs.target require ostree-remount.service and multi-user.target want
 * ostree-finalize-staged.path and ostree-boot-complete.service. Here it has
 * nothing left to do: step 2 bound /var, step 4 made the marker, Debian's
 * package already enables ostree-remount and finalize-staged.path in /etc,
 * and boot-complete only reports a staged deployment that failed to finalize
 * (atoll's agent never stages). It also cannot run: it finds the stateroot by
 * matching ostree= against ^/ostree/boot.[01]/([^/]+)/, but the entries on
 * the ESP name the deployment directory (/ostree/deploy/OS/deploy/CSUM.N,
 * see atoll.wire.bootentry.pin_deployment), so every UEFI boot and every
 * daemon-reload logged "ostree-system-generator failed with exit status 1".
 * A link to /dev/null in /run/systemd/system-generators masks it (systemd
 * reads generators from /run first); the image keeps it, so an initramfs
 * image that uses ostree's own prepare-root still gets its var.mount.
 *
 * Each failure names the step and the path on the console before PID 1 exits
 * (the kernel then reports "Attempted to kill init").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define TAG "atoll-prepare-root"

static void fail(const char *step, const char *path) {
  int saved = errno;
  fprintf(stderr, TAG ": FAILED: %s %s: %s\n", step, path ? path : "",
          strerror(saved));
  fflush(stderr);
  /* Give the console a moment before the kernel's panic scrolls it away. */
  sleep(5);
  exit(EXIT_FAILURE);
}

static void say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs(TAG ": ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static void ensure_dir(const char *path, mode_t mode) {
  if (mkdir(path, mode) < 0 && errno != EEXIST)
    fail("mkdir", path);
}

/* The value of ostree= on the kernel command line (static buffer). */
static const char *ostree_argument(void) {
  static char cmdline[4096];
  int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    fail("open", "/proc/cmdline");
  ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
  if (n < 0)
    fail("read", "/proc/cmdline");
  close(fd);
  cmdline[n] = '\0';
  for (char *word = strtok(cmdline, " \t\n"); word; word = strtok(NULL, " \t\n")) {
    if (strncmp(word, "ostree=", 7) == 0)
      return word + 7;
  }
  errno = ENOENT;
  fail("find ostree= on the kernel command line", "/proc/cmdline");
  return NULL;
}

int main(int argc, char *argv[]) {
  (void)argc;
  (void)argv;
  static char deployment[PATH_MAX];
  struct stat st;

  /* Without an initramfs nobody mounted /dev: the kernel found no
   * /dev/console on the physical root, so PID 1 has no stdio yet. */
  ensure_dir("/dev", 0755);
  if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") < 0 && errno != EBUSY)
    fail("mount devtmpfs on", "/dev");
  int console = open("/dev/console", O_RDWR | O_NOCTTY);
  if (console >= 0) {
    dup2(console, 0);
    dup2(console, 1);
    dup2(console, 2);
    if (console > 2)
      close(console);
  }

  ensure_dir("/proc", 0555);
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0 &&
      errno != EBUSY)
    fail("mount proc on", "/proc");

  const char *target = ostree_argument();
  if (realpath(target, deployment) == NULL)
    fail("resolve ostree= deployment", target);
  if (stat(deployment, &st) < 0 || !S_ISDIR(st.st_mode))
    fail("stat deployment", deployment);
  say("booting deployment %s", deployment);

  /* Mount events below must not propagate back to the physical root. */
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE | MS_SILENT, NULL) < 0)
    fail("make / private", "/");
  if (mount(deployment, deployment, NULL, MS_BIND | MS_SILENT, NULL) < 0)
    fail("bind the deployment onto itself", deployment);
  if (chdir(deployment) < 0)
    fail("chdir", deployment);

  /* The physical root stays reachable as /sysroot (ostree admin needs it). */
  ensure_dir("sysroot", 0755);
  if (mount("/", "sysroot", NULL, MS_BIND | MS_SILENT, NULL) < 0)
    fail("bind the physical root onto", "sysroot");

  /* /var is per stateroot, shared by every deployment: ../../var. */
  if (mount("../../var", "var", NULL, MS_BIND | MS_SILENT, NULL) < 0)
    fail("bind ../../var onto", "var");

  /* /boot on the physical root (no separate /boot partition): ostree's
   * loader symlink lives there. Bind it onto the deployment's /boot, as
   * ostree's own prepare-root does, so that `ostree admin` on the node
   * writes its boot entries where the boot loader sync reads them. */
  if (lstat("/boot/loader", &st) == 0 && S_ISLNK(st.st_mode) &&
      stat("boot", &st) == 0 && S_ISDIR(st.st_mode) &&
      mount("/boot", "boot", NULL, MS_BIND | MS_SILENT, NULL) < 0)
    fail("bind the physical /boot onto", "boot");

  /* /usr is the image: read-only. */
  if (mount("usr", "usr", NULL, MS_BIND | MS_SILENT, NULL) < 0)
    fail("bind usr onto itself", "usr");
  if (mount("usr", "usr", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_SILENT, NULL) < 0)
    fail("remount read-only", "usr");

  /* /run with ostree's booted marker; systemd keeps a /run that is mounted. */
  ensure_dir("run", 0755);
  if (mount("tmpfs", "run", "tmpfs", MS_NOSUID | MS_NODEV | MS_STRICTATIME,
            "mode=0755,size=20%,nr_inodes=800k") < 0)
    fail("mount tmpfs on", "run");
  int marker = open("run/ostree-booted", O_CREAT | O_WRONLY | O_CLOEXEC, 0640);
  if (marker < 0)
    fail("create", "/run/ostree-booted");
  close(marker);

  /* Everything ostree-system-generator would do is done (see the header). */
  ensure_dir("run/systemd", 0755);
  ensure_dir("run/systemd/system-generators", 0755);
  if (symlink("/dev/null", "run/systemd/system-generators/ostree-system-generator") < 0 &&
      errno != EEXIST)
    fail("mask ostree-system-generator in", "/run/systemd/system-generators");

  /* Our /proc and /dev belonged to the physical root; systemd mounts its own. */
  if (umount2("/proc", MNT_DETACH) < 0)
    fail("unmount", "/proc");
  if (umount2("/dev", MNT_DETACH) < 0)
    fail("unmount", "/dev");

  if (mount(".", "/", NULL, MS_MOVE | MS_SILENT, NULL) < 0)
    fail("move the deployment to", "/");
  if (chroot(".") < 0)
    fail("chroot into", deployment);
  if (chdir("/") < 0)
    fail("chdir", "/");

  static const char *const inits[] = {"/usr/lib/systemd/systemd", "/sbin/init"};
  for (size_t i = 0; i < sizeof inits / sizeof inits[0]; i++) {
    if (access(inits[i], X_OK) == 0) {
      execl(inits[i], inits[i], (char *)NULL);
      fail("exec", inits[i]);
    }
  }
  errno = ENOENT;
  fail("find an init in the deployment", "/usr/lib/systemd/systemd");
  return EXIT_FAILURE;
}
