#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "hello.h"

static void send_all(int fd, const char *data, size_t size)
{
    while (size > 0) {
        ssize_t sent = send(fd, data, size, MSG_NOSIGNAL);
        if (sent <= 0)
            return;
        data += sent;
        size -= (size_t)sent;
    }
}

static void respond(int fd, int status, const char *reason, const char *body, int head)
{
    char header[256];
    size_t length = strlen(body);
    int size = snprintf(header, sizeof header,
                        "HTTP/1.0 %d %s\r\nServer: " HELLO_VERSION "\r\n"
                        "Content-Type: text/plain; charset=utf-8\r\n"
                        "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                        status, reason, length);
    send_all(fd, header, (size_t)size);
    if (!head)
        send_all(fd, body, length);
}

void serve(int fd, const char *message)
{
    char request[4096], method[16], path[1024], body[8192];
    struct timeval timeout = {5, 0};
    ssize_t got;

    /* a client that sends nothing must not hold the (single-threaded) server */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    got = recv(fd, request, sizeof request - 1, 0);
    if (got <= 0)
        return;
    request[got] = '\0';
    if (sscanf(request, "%15s %1023s", method, path) != 2) {
        respond(fd, 400, "Bad Request", "bad request\n", 0);
        return;
    }
    int head = strcmp(method, "HEAD") == 0;
    if (!head && strcmp(method, "GET") != 0) {
        respond(fd, 405, "Method Not Allowed", "only GET and HEAD\n", 0);
    } else if (strcmp(path, "/") != 0) {
        respond(fd, 404, "Not Found", "no such page: try /\n", head);
    } else {
        snprintf(body, sizeof body, "%s\n", message);
        respond(fd, 200, "OK", body, head);
    }
    log_line("%s %s", method, path);
}
