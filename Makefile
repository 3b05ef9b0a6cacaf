# The two commands of the README: `make lab` and `make test`.
.PHONY: lab lab-down lab-status test lint unit sanity molecule image venv

lab:            ## Docker, the lab image, the venv, the lab hosts, then site.yml
	bash lab/lab.sh up

lab-down:       ## remove the lab's containers and network (the image stays)
	bash lab/lab.sh down

lab-status:     ## members, roles and lag of the lab cluster
	bash lab/lab.sh status

test:           ## everything CI runs: lint, unit, sanity, Molecule
	bash tests/run.sh

lint:
	bash tests/run.sh lint

unit:
	bash tests/run.sh unit

sanity:
	bash tests/run.sh sanity

molecule:
	bash tests/run.sh molecule

image:
	bash lab/build-image.sh

venv:
	bash lab/venv.sh
