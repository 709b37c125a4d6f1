// Command leaker is the workload of the CRI test: a connection pool that
// leaks, opening a connection to an address every interval and never
// closing one. Built static, it is a container image's one binary.
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: leaker ADDR COUNT INTERVAL")
		os.Exit(2)
	}
	n, err := strconv.Atoi(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	every, err := time.ParseDuration(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var held []net.Conn
	for range n {
		c, err := net.Dial("tcp", os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		held = append(held, c)
		time.Sleep(every)
	}
	time.Sleep(time.Hour) // until the pod is deleted
	_ = held
}
