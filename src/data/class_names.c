/*
 * class_names.c - class names by label from a devkit map_clsloc.txt or a
 * one-name-per-line file (see class_names.h).
 */
#include "data/class_names.h"

#include "base/check.h"
#include "base/fileio.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void class_names_free(ClassNames *cn)
{
    if (!cn) return;
    for (int32_t i = 0; i < cn->n; i++) free(cn->names[i]);
    free(cn->names);
    cn->names = NULL;
    cn->n = 0;
}

static char *dup_str(const char *s, size_t len)
{
    char *d = xmalloc(len + 1);
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

/* Grows cn to hold labels 0..label (new entries NULL). */
static void grow_to(ClassNames *cn, int32_t label)
{
    if (label < cn->n) return;
    int32_t n = label + 1;
    char **p = xcalloc((size_t)n, sizeof *p);
    if (cn->n) memcpy(p, cn->names, (size_t)cn->n * sizeof *p);
    free(cn->names);
    cn->names = p;
    cn->n = n;
}

void class_names_set_list(ClassNames *cn, const char *const *names, int n)
{
    class_names_free(cn);
    if (n <= 0) return;
    grow_to(cn, n - 1);
    for (int i = 0; i < n; i++) cn->names[i] = names[i] ? dup_str(names[i], strlen(names[i])) : NULL;
}

const char *class_names_get(const ClassNames *cn, int32_t label)
{
    if (!cn || label < 0 || label >= cn->n || !cn->names[label] || !cn->names[label][0]) return NULL;
    return cn->names[label];
}

/* "WNID LABEL NAME": WNID is 'n' followed by 8 digits. */
static int is_devkit_line(const char *s, size_t len)
{
    if (len < 13 || s[0] != 'n') return 0;
    for (int i = 1; i <= 8; i++)
        if (!isdigit((unsigned char)s[i])) return 0;
    return s[9] == ' ' || s[9] == '\t';
}

/* Parses one devkit line (without its newline) into label and name span. */
static int parse_devkit(const char *s, size_t len, long *label, const char **name, size_t *name_len)
{
    if (!is_devkit_line(s, len)) return 0;
    size_t i = 9;
    while (i < len && (s[i] == ' ' || s[i] == '\t')) i++;
    long v = 0;
    size_t d0 = i;
    while (i < len && isdigit((unsigned char)s[i]) && v <= CLASS_NAMES_MAX_LABEL) v = v * 10 + (s[i++] - '0');
    if (i == d0 || i >= len || (s[i] != ' ' && s[i] != '\t')) return 0;
    while (i < len && (s[i] == ' ' || s[i] == '\t')) i++;
    size_t e = len;
    while (e > i && isspace((unsigned char)s[e - 1])) e--;
    if (e == i) return 0;
    *label = v;
    *name = s + i;
    *name_len = e - i;
    return 1;
}

int class_names_read(ClassNames *cn, const char *path, Err *err)
{
    memset(cn, 0, sizeof *cn);
    size_t len = 0;
    Err e;
    char *buf = fileio_read_text(path, CLASS_NAMES_MAX_FILE_BYTES, &len, &e);
    if (!buf)
        return err_set(err, e.code, "class names: %s (hint: the devkit's map_clsloc.txt, or one name per line)",
                       e.msg);
    int rc = AE_OK;
    if (memchr(buf, '\0', len))
        rc = err_set(err, AE_EFORMAT, "class names %s: holds a NUL byte: not a text file", path);
    int devkit = -1; /* decided by the first non-empty line */
    long line = 0;
    int32_t next = 0; /* plain lists: the label of the next line */
    for (size_t p = 0; rc == AE_OK && p < len;) {
        const char *s = buf + p, *nl = memchr(s, '\n', len - p);
        size_t l = nl ? (size_t)(nl - s) : len - p;
        p += l + 1;
        line++;
        while (l && isspace((unsigned char)s[l - 1])) l--;
        size_t b = 0;
        while (b < l && isspace((unsigned char)s[b])) b++;
        if (devkit == -1 && b == l) continue; /* blank lines before the first name */
        if (devkit == -1) devkit = is_devkit_line(s + b, l - b);
        if (devkit) {
            if (b == l) continue;
            long label;
            const char *name;
            size_t nlen;
            if (!parse_devkit(s + b, l - b, &label, &name, &nlen)) {
                rc = err_set(err, AE_EFORMAT, "class names %s line %ld: not \"WNID LABEL NAME\" as the lines before "
                             "(hint: the devkit's map_clsloc.txt, or one name per line)", path, line);
            } else if (label < 1 || label > CLASS_NAMES_MAX_LABEL) {
                rc = err_set(err, AE_EFORMAT, "class names %s line %ld: label %ld outside 1..%d", path, line, label,
                             CLASS_NAMES_MAX_LABEL);
            } else if (class_names_get(cn, (int32_t)label)) {
                rc = err_set(err, AE_EFORMAT, "class names %s line %ld: label %ld named twice", path, line, label);
            } else {
                grow_to(cn, (int32_t)label);
                cn->names[label] = dup_str(name, nlen);
            }
        } else {
            if (next >= CLASS_NAMES_MAX_LABEL) {
                rc = err_set(err, AE_EFORMAT, "class names %s: more than %d lines", path, CLASS_NAMES_MAX_LABEL);
                break;
            }
            grow_to(cn, next);
            cn->names[next++] = dup_str(s + b, l - b);
        }
    }
    if (rc == AE_OK && devkit == -1)
        rc = err_set(err, AE_EFORMAT, "class names %s: empty (hint: one name per line, or the devkit's "
                     "map_clsloc.txt)", path);
    /* A plain list ends at its last non-empty line. */
    while (rc == AE_OK && !devkit && cn->n && cn->names[cn->n - 1][0] == '\0') {
        free(cn->names[--cn->n]);
        cn->names[cn->n] = NULL;
    }
    free(buf);
    if (rc) class_names_free(cn);
    return rc;
}
