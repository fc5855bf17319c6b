#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "hello.h"

/* One timestamped line on stderr: supervisord keeps it in the partition's log. */
void log_line(const char *format, ...)
{
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    va_list ap;

    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
    fprintf(stderr, "%s hello-c: ", stamp);
    va_start(ap, format);
    vfprintf(stderr, format, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}
