# The det agent image: Docker, (gpu=true) the NVIDIA driver and container toolkit, the agent bundle
# (npm run bundle:agent) under /opt/determined and the det-agent systemd unit, which joins the master
# named in EC2 user data on boot. See docs/ami.md.
#
#   npm run bundle:agent
#   packer init packer/ && packer build -var region=us-west-2 [-var gpu=true] -only=amazon-ebs.agent packer/
#
# Two sources share the provisioners: amazon-ebs.agent bakes the AMI; docker.agent runs the same
# steps in a local container (test/e2e/ami-bake.test.ts boots its result as an "instance").

variable "region" {
  type        = string
  default     = "us-west-2"
  description = "AWS region the AMI is built in (and registered in)."
}

variable "instance_type" {
  type        = string
  default     = "t3.large"
  description = "Instance type of the temporary build instance (a GPU is not needed to install the driver)."
}

variable "base_ami_name" {
  type        = string
  default     = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"
  description = "Name filter of the base AMI; the newest match is used (default: Ubuntu 22.04 LTS)."
}

variable "base_ami_owners" {
  type        = list(string)
  default     = ["099720109477"]
  description = "Owners of the base AMI (default: Canonical)."
}

variable "ssh_username" {
  type        = string
  default     = "ubuntu"
  description = "Login user of the base AMI."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build instance (default: the default VPC's)."
}

variable "gpu" {
  type        = bool
  default     = false
  description = "Install the NVIDIA driver, fabric manager and container toolkit (Docker's nvidia runtime)."
}

variable "nvidia_driver_branch" {
  type        = string
  default     = "535-server"
  description = "NVIDIA driver branch for gpu=true (an ubuntu-drivers name: 535-server, 550-server, 570-server)."
}

variable "nvidia_container_repo" {
  type        = string
  default     = "https://nvidia.github.io/libnvidia-container"
  description = "NVIDIA's libnvidia-container apt repository (gpu=true), or a mirror of it."
}

variable "agent_bundle" {
  type        = string
  default     = ""
  description = "The agent tarball; default: dist/det-agent-<package.json version>-linux-x64.tar.gz of this checkout."
}

variable "images" {
  type        = list(string)
  default     = []
  description = "Task images to pre-pull, so the first task on a new instance starts without a pull."
}

variable "volume_size" {
  type        = number
  default     = 100
  description = "Root volume size of the AMI in GiB (images, the data cache and task files live there)."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Extra tags of the AMI and its snapshot."
}

variable "apt_sources" {
  type        = string
  default     = ""
  description = "Apt sources to bake with instead of the image's own (e.g. a mirror); the image keeps its own."
}

variable "docker_image" {
  type        = string
  default     = "ubuntu:22.04"
  description = "docker.agent: base image (it boots as an instance only if it has systemd)."
}

variable "docker_pull" {
  type        = bool
  default     = true
  description = "docker.agent: pull docker_image first (false for a local-only image)."
}

variable "docker_repository" {
  type        = string
  default     = "det-agent-local"
  description = "docker.agent: repository the result is tagged into (tag: the agent version)."
}

locals {
  version      = jsondecode(file(abspath("${path.root}/../package.json"))).version
  agent_bundle = var.agent_bundle != "" ? var.agent_bundle : abspath("${path.root}/../dist/det-agent-${local.version}-linux-x64.tar.gz")
  flavor       = var.gpu ? "gpu" : "cpu"
  stamp        = formatdate("YYYYMMDD-hhmmss", timestamp())
  image_tags = merge(var.tags, {
    Name                = "det-agent-${local.version}-${local.flavor}"
    "det:agent-version" = local.version
    "det:gpu"           = "${var.gpu}"
  })
  # sudo only where the build user is not root (amazon-ebs: ubuntu; docker: root, no sudo installed).
  execute_command = "chmod +x {{ .Path }}; if [ \"$(id -u)\" -eq 0 ]; then env {{ .Vars }} {{ .Path }}; else sudo env {{ .Vars }} {{ .Path }}; fi"
}

source "amazon-ebs" "agent" {
  region          = var.region
  instance_type   = var.instance_type
  subnet_id       = var.subnet_id
  ssh_username    = var.ssh_username
  ami_name        = "det-agent-${local.version}-${local.flavor}-${local.stamp}"
  ami_description = "det agent ${local.version} (${local.flavor}): Docker and det-agent.service, joins the master from EC2 user data"
  tags            = local.image_tags
  snapshot_tags   = local.image_tags

  source_ami_filter {
    filters = {
      name                = var.base_ami_name
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = var.base_ami_owners
    most_recent = true
  }

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = var.volume_size
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
  }
}

source "docker" "agent" {
  image  = var.docker_image
  pull   = var.docker_pull
  commit = true
  # Host networking: the test dockerd has no bridge, and the bake reaches apt mirrors (or the test's
  # local repository on 127.0.0.1) like a host would.
  run_command = ["-d", "-i", "-t", "--network=host", "--entrypoint=/bin/sh", "--", "{{ .Image }}"]
  # Boots like an instance: systemd as PID 1 (docker commit takes no STOPSIGNAL: run it with
  # --stop-signal SIGRTMIN+3).
  changes = [
    "ENTRYPOINT [\"/sbin/init\"]",
    "CMD []",
    "ENV container=docker",
    "LABEL ai.det.agent-version=${local.version} ai.det.gpu=${var.gpu}",
  ]
}

build {
  sources = ["source.amazon-ebs.agent", "source.docker.agent"]

  provisioner "shell" {
    script           = "${path.root}/scripts/prepare.sh"
    execute_command  = local.execute_command
    environment_vars = ["APT_SOURCES=${var.apt_sources}"]
  }

  provisioner "shell" {
    script          = "${path.root}/scripts/install-docker.sh"
    execute_command = local.execute_command
  }

  provisioner "shell" {
    script          = "${path.root}/scripts/install-nvidia.sh"
    execute_command = local.execute_command
    environment_vars = [
      "DET_GPU=${var.gpu}",
      "NVIDIA_DRIVER_BRANCH=${var.nvidia_driver_branch}",
      "NVIDIA_CONTAINER_REPO=${var.nvidia_container_repo}",
    ]
  }

  provisioner "file" {
    source      = local.agent_bundle
    destination = "/tmp/det-agent.tar.gz"
  }

  provisioner "file" {
    source      = "${path.root}/files/det-agent.service"
    destination = "/tmp/det-agent.service"
  }

  provisioner "shell" {
    script           = "${path.root}/scripts/install-agent.sh"
    execute_command  = local.execute_command
    environment_vars = ["AGENT_BUNDLE=/tmp/det-agent.tar.gz", "AGENT_UNIT=/tmp/det-agent.service"]
  }

  provisioner "shell" {
    script           = "${path.root}/scripts/prepull-images.sh"
    execute_command  = local.execute_command
    environment_vars = ["IMAGES=${join(" ", var.images)}"]
  }

  provisioner "shell" {
    script          = "${path.root}/scripts/cleanup.sh"
    execute_command = local.execute_command
  }

  post-processor "docker-tag" {
    only       = ["docker.agent"]
    repository = var.docker_repository
    tags       = [local.version]
  }
}
