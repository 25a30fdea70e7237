build/obj/check.o: src/check.c include/check.h include/par.h \
 include/err.h
include/check.h:
include/par.h:
include/err.h:
