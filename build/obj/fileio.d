build/obj/fileio.o: src/fileio.c include/fileio.h include/err.h
include/fileio.h:
include/err.h:
