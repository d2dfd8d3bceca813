// rr: a native 1-byte ping-pong (profiling aid for bench/lab-up.ts; not part of make bench).
//   cc -O2 -pthread -o /tmp/rr bench/rr.c; /tmp/rr serve PORT | /tmp/rr rr HOST PORT SECS | /tmp/rr crr HOST PORT SECS
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static void *echo(void *p){int fd=(int)(long)p;char b[4096];ssize_t n;while((n=read(fd,b,sizeof b))>0){if(write(fd,b,n)!=n)break;}close(fd);return 0;}
static struct sockaddr_in addr(const char*h,int port){struct sockaddr_in a={0};a.sin_family=AF_INET;a.sin_port=htons(port);inet_pton(AF_INET,h,&a.sin_addr);return a;}
static int dial(struct sockaddr_in*a){int fd=socket(AF_INET,SOCK_STREAM,0);int one=1;setsockopt(fd,IPPROTO_TCP,TCP_NODELAY,&one,sizeof one);if(connect(fd,(void*)a,sizeof*a)){perror("connect");exit(1);}return fd;}
int main(int c,char**v){
  if(!strcmp(v[1],"serve")){int l=socket(AF_INET,SOCK_STREAM,0);int one=1;setsockopt(l,SOL_SOCKET,SO_REUSEADDR,&one,sizeof one);struct sockaddr_in a=addr(c>3?v[3]:"0.0.0.0",atoi(v[2]));if(bind(l,(void*)&a,sizeof a)||listen(l,512)){perror("bind");return 1;}
    for(;;){int fd=accept(l,0,0);if(fd<0)continue;setsockopt(fd,IPPROTO_TCP,TCP_NODELAY,&one,sizeof one);pthread_t t;pthread_create(&t,0,echo,(void*)(long)fd);pthread_detach(t);}}
  struct sockaddr_in a=addr(v[2],atoi(v[3]));double secs=atof(v[4]);long k=0;char b=1;double end=now()+secs;
  if(!strcmp(v[1],"rr")){int fd=dial(&a);while(now()<end){if(write(fd,&b,1)!=1||read(fd,&b,1)!=1){perror("rr");return 1;}k++;}printf("%.0f rt/s\n",k/secs);}
  else {while(now()<end){int fd=dial(&a);if(write(fd,&b,1)!=1||read(fd,&b,1)!=1){perror("crr");return 1;}close(fd);k++;}printf("%.0f conn/s\n",k/secs);}
  return 0;}
