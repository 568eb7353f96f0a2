/* The sandbox ("pause") process of the real-node tier's pods: it holds the pod's namespaces, reaps
 * the zombies a shared PID namespace leaves to it, and exits at once on SIGTERM or SIGINT so a pod
 * stops without waiting for a kill. containerd runs it from a scratch image that
 * scripts/build-image.sh builds, because no registry is reachable to pull registry.k8s.io/pause. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signum) {
    (void)signum;
    _exit(0);
}

static void reap(int signum) {
    (void)signum;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction on_stop = {.sa_handler = stop};
    struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    sigaction(SIGTERM, &on_stop, NULL);
    sigaction(SIGINT, &on_stop, NULL);
    sigaction(SIGCHLD, &on_child, NULL);
    for (;;) {
        pause();
    }
}
