#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hello.h"

static volatile sig_atomic_t stopping;

static void on_signal(int number)
{
    (void)number;
    stopping = 1;
}

static int usage(const char *program)
{
    fprintf(stderr,
            "usage: %s --host ADDRESS --port PORT [--message TEXT]\n"
            "       %s --selftest | --version\n",
            program, program);
    return 2;
}

int main(int argc, char **argv)
{
    const char *host = NULL, *port = NULL, *message = "Hello from hello-c!";
    struct sigaction action;
    int i, fd;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--host") == 0 && i + 1 < argc)
            host = argv[++i];
        else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            port = argv[++i];
        else if (strcmp(argv[i], "--message") == 0 && i + 1 < argc)
            message = argv[++i];
        else if (strcmp(argv[i], "--version") == 0) {
            printf("%s\n", HELLO_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--selftest") == 0) {
            printf("%s: %d units, checksum %lx\n", HELLO_VERSION, units_count(), units_checksum());
            return 0;
        } else
            return usage(argv[0]);
    }
    if (!host || !port)
        return usage(argv[0]);

    /* no SA_RESTART: accept() returns EINTR and the loop sees `stopping` */
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);

    fd = listen_on(host, port);
    if (fd < 0)
        return 1;
    log_line("listening on %s port %s", host, port);
    while (!stopping) {
        int client = accept(fd, NULL, NULL);
        if (client < 0) {
            if (errno != EINTR)
                log_line("accept: %s", strerror(errno));
            continue;
        }
        serve(client, message);
        close(client);
    }
    log_line("stopping");
    close(fd);
    return 0;
}
