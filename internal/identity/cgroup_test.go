package identity

import (
	"testing"

	"github.com/conntracer/conntracer/internal/events"
)

const (
	cid  = "4be1c0ffee5a0d2b9e7f6c3a8d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e"
	uid  = "7c2f1d3e-8a9b-4c5d-9e0f-1a2b3c4d5e6f"
	uidU = "7c2f1d3e_8a9b_4c5d_9e0f_1a2b3c4d5e6f"
)

// The path shapes below are what each runtime creates (systemd and
// cgroupfs cgroup drivers), as /proc/PID/cgroup shows them.
func TestFromCgroupPath(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		want       events.Identity
	}{
		{"containerd systemd burstable", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			events.Identity{Runtime: RuntimeContainerd, ContainerID: cid, PodUID: uid}},
		{"containerd systemd guaranteed", "/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			events.Identity{Runtime: RuntimeContainerd, ContainerID: cid, PodUID: uid}},
		{"kubelet cgroupfs besteffort", "/kubepods/besteffort/pod" + uid + "/" + cid,
			events.Identity{ContainerID: cid, PodUID: uid}},
		{"kubelet cgroupfs guaranteed", "/kubepods/pod" + uid + "/" + cid,
			events.Identity{ContainerID: cid, PodUID: uid}},
		{"cri-o systemd", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + cid + ".scope",
			events.Identity{Runtime: RuntimeCRIO, ContainerID: cid, PodUID: uid}},
		{"cri-o conmon", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-conmon-" + cid + ".scope",
			events.Identity{Runtime: RuntimeCRIO, ContainerID: cid, PodUID: uid}},
		{"cri-o cgroupfs", "/kubepods/burstable/pod" + uid + "/crio-" + cid,
			events.Identity{Runtime: RuntimeCRIO, ContainerID: cid, PodUID: uid}},
		{"cri-o systemd container subcgroup", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/crio-" + cid + ".scope/container",
			events.Identity{Runtime: RuntimeCRIO, ContainerID: cid, PodUID: uid}},
		{"pod cgroup itself", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice",
			events.Identity{PodUID: uid}},
		{"docker systemd", "/system.slice/docker-" + cid + ".scope",
			events.Identity{Runtime: RuntimeDocker, ContainerID: cid}},
		{"docker cgroupfs", "/docker/" + cid,
			events.Identity{Runtime: RuntimeDocker, ContainerID: cid}},
		{"cri-dockerd systemd", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/docker-" + cid + ".scope",
			events.Identity{Runtime: RuntimeDocker, ContainerID: cid, PodUID: uid}},
		{"podman systemd rootful", "/machine.slice/libpod-" + cid + ".scope",
			events.Identity{Runtime: RuntimePodman, ContainerID: cid}},
		{"podman systemd container subcgroup", "/machine.slice/libpod-" + cid + ".scope/container",
			events.Identity{Runtime: RuntimePodman, ContainerID: cid}},
		{"podman conmon", "/machine.slice/libpod-conmon-" + cid + ".scope",
			events.Identity{Runtime: RuntimePodman, ContainerID: cid}},
		{"podman pod", "/machine.slice/machine-libpod_pod_0123456789ab.slice/libpod-" + cid + ".scope",
			events.Identity{Runtime: RuntimePodman, ContainerID: cid}},
		{"podman rootless", "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + cid + ".scope",
			events.Identity{Runtime: RuntimePodman, ContainerID: cid}},
		{"podman cgroupfs", "/libpod_parent/libpod-" + cid,
			events.Identity{Runtime: RuntimePodman, ContainerID: cid}},
		{"nerdctl systemd", "/system.slice/nerdctl-" + cid + ".scope",
			events.Identity{Runtime: RuntimeContainerd, ContainerID: cid}},
		{"kind node: kubepods inside a docker container", "/system.slice/docker-" + cid[1:] + "0.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			events.Identity{Runtime: RuntimeContainerd, ContainerID: cid, PodUID: uid}},
		{"systemd service", "/system.slice/nginx.service", events.Identity{Unit: "nginx.service"}},
		{"systemd template instance", "/system.slice/system-getty.slice/getty@tty1.service", events.Identity{Unit: "getty@tty1.service"}},
		{"login session", "/user.slice/user-1000.slice/session-3.scope", events.Identity{Unit: "session-3.scope"}},
		{"user service", "/user.slice/user-1000.slice/user@1000.service/app.slice/redis.service", events.Identity{Unit: "redis.service"}},
		{"absolute mount path", "/sys/fs/cgroup/unified/system.slice/nginx.service", events.Identity{Unit: "nginx.service"}},
		{"root", "/", events.Identity{}},
		{"empty", "", events.Identity{}},
		{"plain cgroup", "/process_api/91ff4eb9f8b01c510d52c56982286b08", events.Identity{}},
		{"short id is no container", "/docker/4be1c0ffee5a", events.Identity{}},
		{"upper-case hex is no container", "/docker/4BE1C0FFEE5A0D2B9E7F6C3A8D1E2F3A4B5C6D7E8F9A0B1C2D3E4F5A6B7C8D9E", events.Identity{}},
		{"pod outside kubepods", "/pod" + uid, events.Identity{}},
		{"dots and slashes", "/../system.slice/../nginx.service", events.Identity{Unit: "nginx.service"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := FromCgroupPath(tc.path); got != tc.want {
				t.Errorf("FromCgroupPath(%q)\n got %+v\nwant %+v", tc.path, got, tc.want)
			}
		})
	}
}

// /proc/PID/cgroup on v2, hybrid and v1 hosts.
func TestFromProcCgroup(t *testing.T) {
	for _, tc := range []struct {
		name, content, wantPath string
		want                    events.Identity
	}{
		{"v2", "0::/system.slice/docker-" + cid + ".scope\n", "/system.slice/docker-" + cid + ".scope",
			events.Identity{Runtime: RuntimeDocker, ContainerID: cid}},
		{"hybrid, podman cgroupfs in every hierarchy",
			"9:name=systemd:/libpod_parent/libpod-" + cid + "\n4:memory:/libpod_parent/libpod-" + cid + "\n0::/libpod_parent/libpod-" + cid + "\n",
			"/libpod_parent/libpod-" + cid, events.Identity{Runtime: RuntimePodman, ContainerID: cid}},
		{"hybrid, container only in v1 controllers",
			"9:name=systemd:/\n4:memory:/kubepods/burstable/pod" + uid + "/" + cid + "\n3:cpuset:/\n0::/\n",
			"/kubepods/burstable/pod" + uid + "/" + cid, events.Identity{ContainerID: cid, PodUID: uid}},
		{"v1 systemd unit", "12:pids:/system.slice/nginx.service\n1:name=systemd:/system.slice/nginx.service\n",
			"/system.slice/nginx.service", events.Identity{Unit: "nginx.service"}},
		{"v1 nothing recognised prefers unified", "4:memory:/process_api/91ff\n0::/\n", "/", events.Identity{}},
		{"garbage", "not a cgroup file\n::\n", "", events.Identity{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, p := FromProcCgroup([]byte(tc.content))
			if got != tc.want || p != tc.wantPath {
				t.Errorf("FromProcCgroup(%q)\n got %+v %q\nwant %+v %q", tc.content, got, p, tc.want, tc.wantPath)
			}
		})
	}
}

func TestWorkload(t *testing.T) {
	for _, tc := range []struct {
		id   events.Identity
		want string
	}{
		{events.Identity{Namespace: "shop", Pod: "checkout-7d9f", Container: "api", ContainerID: cid}, "shop/checkout-7d9f container api"},
		{events.Identity{Runtime: RuntimePodman, Container: "web", ContainerID: cid}, "container web"},
		{events.Identity{Runtime: RuntimeDocker, ContainerID: cid}, "container 4be1c0ffee5a"},
		{events.Identity{Unit: "nginx.service"}, "nginx.service"},
		{events.Identity{}, ""},
	} {
		if got := tc.id.Workload(); got != tc.want {
			t.Errorf("%+v.Workload() = %q, want %q", tc.id, got, tc.want)
		}
	}
}
