// The etcd server, as etcd's own main.go (go.etcd.io/etcd/v3, which cannot be required: its
// go.mod replaces the sibling modules with local paths).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
