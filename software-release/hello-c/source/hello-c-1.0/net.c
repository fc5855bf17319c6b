#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "hello.h"

int listen_on(const char *host, const char *port)
{
    struct addrinfo hints, *found, *ai;
    int fd = -1, one = 1, error;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    error = getaddrinfo(host, port, &hints, &found);
    if (error) {
        log_line("cannot use %s port %s: %s", host, port, gai_strerror(error));
        return -1;
    }
    for (ai = found; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0)
            continue;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 16) == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(found);
    if (fd < 0)
        log_line("cannot listen on %s port %s", host, port);
    return fd;
}
