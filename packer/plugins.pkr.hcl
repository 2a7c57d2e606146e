# Plugins for `packer init packer/` (Packer >= 1.7). Kept apart from agent.pkr.hcl because older
# Packers (Debian's 1.6.6, which the tests use to validate the template) reject this block.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
    docker = {
      source  = "github.com/hashicorp/docker"
      version = ">= 1.0.8"
    }
  }
}
