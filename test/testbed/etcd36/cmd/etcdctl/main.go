// etcdctl, as go.etcd.io/etcd/etcdctl/v3's main.go.
package main

import "go.etcd.io/etcd/etcdctl/v3/ctlv3"

func main() {
	ctlv3.MustStart()
}
