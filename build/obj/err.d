build/obj/err.o: src/err.c include/err.h
include/err.h:
