/*
 * web_page.c - the bytes of src/search/web_page.html, embedded at build time (see
 * include/web_page.h).  The Makefile generates web_page_html.h with od.
 */
#include "search/web_page.h"

#include "web_page_html.h" /* static const unsigned char WEB_PAGE_HTML[] */

const char *web_page_html(void) { return (const char *)WEB_PAGE_HTML; }

size_t web_page_len(void) { return sizeof WEB_PAGE_HTML; }
