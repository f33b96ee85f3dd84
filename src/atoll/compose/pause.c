/*
 * atoll's pause: the process that holds a Kubernetes pod's namespaces (the
 * "sandbox" or "infra" container), built statically from this file by
 * `atoll oci pause` and preloaded, so no node pulls it from a registry.
 *
 * What it must do, as upstream's build/pause/linux/pause.c does:
 *   - run as PID 1 of the pod's PID namespace (when the pod shares one) and
 *     reap the zombies re-parented to it (SIGCHLD: waitpid until none left);
 *   - exit 0 on SIGINT or SIGTERM, so the runtime can stop the sandbox;
 *   - otherwise sleep forever, using no CPU.
 * `-v` prints the version and exits.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "atoll-pause 1"

static void stop(int signal_number) {
    (void)signal_number;
    _exit(0);
}

static void reap(int signal_number) {
    (void)signal_number;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int on(int signal_number, void (*handler)(int), int flags) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = handler;
    action.sa_flags = flags;
    sigemptyset(&action.sa_mask);
    return sigaction(signal_number, &action, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        printf("%s\n", VERSION);
        return 0;
    }
    if (getpid() != 1) {
        fprintf(stderr, "pause: warning: not PID 1, so orphans are not reaped here\n");
    }
    if (on(SIGINT, stop, 0) < 0 || on(SIGTERM, stop, 0) < 0 ||
        on(SIGCHLD, reap, SA_NOCLDSTOP | SA_RESTART) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
    return 42; /* not reached */
}
