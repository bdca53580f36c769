// Command kubeadm is k8s.io/kubernetes/cmd/kubeadm (kubeadm.go) of the pinned
// k8s.io/kubernetes release, rebuilt from the Go module for the zdt-agent testbed.
// The body is copied unchanged from upstream (Apache-2.0, The Kubernetes Authors).
package main

import (
	"k8s.io/kubernetes/cmd/kubeadm/app"
	utilerrors "k8s.io/kubernetes/cmd/kubeadm/app/util/errors"
)

func main() {
	utilerrors.HandleError(app.Run())
}
