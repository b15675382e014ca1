/*
 * A fault-injection shim for the durability tests, loaded into the server
 * binary with LD_PRELOAD (nothing of it is in the server).
 *
 * While the file named by FSYNC_SHIM_FAIL_IF_EXISTS exists, fsync(2),
 * fdatasync(2), syncfs(2) and sync_file_range(2) fail with EIO without
 * touching the disk, as a dying disk's would; otherwise they are passed
 * to the kernel unchanged. (strace shows the store's sync publishes each
 * cost one fdatasync of fjall's journal; fsync is used at open and close.)
 *
 * Build: cc -shared -fPIC -O2 -o fsync_fail.so fsync_fail.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static int failing(void)
{
    const char *trigger = getenv("FSYNC_SHIM_FAIL_IF_EXISTS");
    return trigger != NULL && access(trigger, F_OK) == 0;
}

int fsync(int fd)
{
    if (failing()) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_fsync, fd);
}

int fdatasync(int fd)
{
    if (failing()) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_fdatasync, fd);
}

int syncfs(int fd)
{
    if (failing()) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_syncfs, fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags)
{
    if (failing()) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_sync_file_range, fd, offset, nbytes, flags);
}
