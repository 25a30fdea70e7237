/*
 * numbered_set.c - finds missing members of numbered file sets (see
 * include/numbered_set.h): names are split at their last digit run into
 * (prefix, number, suffix), grouped by (prefix, suffix), and each group's
 * sorted numbers are checked for holes.  Does not touch the file system.
 * Pure; no MPI, no threads.
 */
#include "data/numbered_set.h"

#include "base/check.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Missing names spelt out in the message at most (then "and N more"). */
#define NUMBERED_SET_NAMES_SHOWN 4

typedef struct Member {
    const char *name;
    size_t pre;    /* bytes before the digit run */
    size_t digits; /* length of the digit run */
    long num;
} Member;

/* Splits name at its last digit run; 0 if it has one of at most
 * NUMBERED_SET_MAX_DIGITS digits. */
static int split(Member *m, const char *name)
{
    size_t len = strlen(name), end = len;
    while (end > 0 && !isdigit((unsigned char)name[end - 1])) end--;
    if (end == 0) return -1;
    size_t start = end;
    while (start > 0 && isdigit((unsigned char)name[start - 1])) start--;
    if (end - start > NUMBERED_SET_MAX_DIGITS) return -1;
    m->name = name;
    m->pre = start;
    m->digits = end - start;
    m->num = strtol(name + start, NULL, 10);
    return 0;
}

/* Same set: equal prefix and suffix. */
static int same_set(const Member *a, const Member *b)
{
    if (a->pre != b->pre || strncmp(a->name, b->name, a->pre) != 0) return 0;
    return strcmp(a->name + a->pre + a->digits, b->name + b->pre + b->digits) == 0;
}

static int cmp_member(const void *x, const void *y)
{
    const Member *a = x, *b = y;
    if (a->pre != b->pre) return a->pre < b->pre ? -1 : 1;
    int c = strncmp(a->name, b->name, a->pre);
    if (c) return c;
    c = strcmp(a->name + a->pre + a->digits, b->name + b->pre + b->digits);
    if (c) return c;
    return (a->num > b->num) - (a->num < b->num);
}

/* One missing name: the set's prefix, the number (zero-padded like the
 * set's first member when that one is), the suffix. */
static int missing_name(char *out, size_t cap, const Member *like, long num)
{
    int pad = like->digits > 1 && like->name[like->pre] == '0' ? (int)like->digits : 1;
    return snprintf(out, cap, "%.*s%0*ld%s", (int)like->pre, like->name, pad, num,
                    like->name + like->pre + like->digits);
}

long numbered_set_gaps(const char *const *names, int n, char *msg, size_t cap)
{
    if (msg && cap) msg[0] = '\0';
    Member *m = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *m);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (split(&m[k], names[i]) == 0) k++;
    qsort(m, (size_t)k, sizeof *m, cmp_member);
    long total = 0;
    for (int a = 0; a < k;) {
        int b = a + 1;
        while (b < k && same_set(&m[a], &m[b])) b++;
        /* Set m[a..b): numbers ascending, maybe repeated (a.npz, a.npz). */
        int distinct = 1;
        for (int i = a + 1; i < b; i++) distinct += m[i].num != m[i - 1].num;
        long lo = m[a].num, hi = m[b - 1].num, first = lo > 1 ? 1 : lo;
        long missing = distinct >= 2 ? (hi - first + 1) - distinct : 0;
        if (missing > 0) {
            if (msg && cap && total == 0) {
                size_t at = (size_t)snprintf(msg, cap, "%.*sN%s has N = %ld..%ld (%d files) but ", (int)m[a].pre,
                                             m[a].name, m[a].name + m[a].pre + m[a].digits, lo, hi, distinct);
                long shown = 0, j = a;
                for (long v = first; v <= hi && at < cap; v++) {
                    while (j < b && m[j].num < v) j++;
                    if (j < b && m[j].num == v) continue;
                    if (shown == NUMBERED_SET_NAMES_SHOWN) {
                        at += (size_t)snprintf(msg + at, cap - at, " and %ld more", missing - shown);
                        break;
                    }
                    if (shown) at += (size_t)snprintf(msg + at, cap - at, ", ");
                    if (at < cap) at += (size_t)missing_name(msg + at, cap - at, &m[a], v);
                    shown++;
                }
                if (at < cap) snprintf(msg + at, cap - at, " %s missing", missing == 1 ? "is" : "are");
            }
            total += missing;
        }
        a = b;
    }
    free(m);
    return total;
}
