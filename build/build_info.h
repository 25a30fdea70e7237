#define AESIM_BUILD_INFO "gcc (Debian 12.2.0-14+deb12u1) 12.2.0; CFLAGS -O2 -fopenmp; MPI=1 OMP=1; git 91c5b4d-dirty"
