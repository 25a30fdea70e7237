/*
 * web_page.h - the one web page of aesim-search serve (GET /): plain HTML,
 * CSS and JavaScript with no external resource (no CDN, no build step).
 * Its source is src/search/web_page.html; the Makefile turns it into a byte array
 * (build/web_page_html.h) compiled into src/web_page.c.
 *
 * The page: choose or drop an image (POST /search with the file as body),
 * the k neighbours as a grid of thumbnails (GET /images/ID) with distance
 * and label, a click on a result searches for more like it ({"id": N}), a
 * label filter (GET /labels) and k.  Static data only; no threads, no MPI.
 */
#ifndef AESIM_WEB_PAGE_H
#define AESIM_WEB_PAGE_H

#include <stddef.h>

/* The page's bytes (UTF-8 HTML, not NUL-terminated) and their count. */
const char *web_page_html(void);
size_t web_page_len(void);

#endif
