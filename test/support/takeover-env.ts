import {
  AllocateAddressCommand,
  AssociateAddressCommand,
  AttachNetworkInterfaceCommand,
  CreateNetworkInterfaceCommand,
  CreateRouteCommand,
  CreateRouteTableCommand,
  CreateSubnetCommand,
  CreateVpcCommand,
  DescribeAddressesCommand,
  DescribeNetworkInterfacesCommand,
  DescribeRouteTablesCommand,
  RunInstancesCommand,
} from '@aws-sdk/client-ec2';
import { setTimeout as sleep } from 'node:timers/promises';
import { AZ, type AwsWorld } from './boot-env.js';

/**
 * A NAT world in moto for the takeover tests, the bench and the demo: a subnet, and per
 * scenario a route table, an Elastic IP (both tagged zdt:nat=<tag>) and a static ENI, all held
 * by a predecessor instance.
 */

export interface NatResources {
  tag: string;
  subnetId: string;
  allocationId: string;
  eniId: string;
  tableId: string;
}

export interface NatInstance {
  id: string;
  primaryEni: string;
}

export async function createSubnet(w: AwsWorld): Promise<string> {
  const vpc = (await w.ec2.send(new CreateVpcCommand({ CidrBlock: '10.20.0.0/16' }))).Vpc!.VpcId!;
  return (await w.ec2.send(new CreateSubnetCommand({ VpcId: vpc, CidrBlock: '10.20.1.0/24', AvailabilityZone: AZ }))).Subnet!.SubnetId!;
}

/** Launched one after another: moto's LaunchTime has whole seconds, and their order is the point. */
export async function launchNat(w: AwsWorld, subnetId: string): Promise<NatInstance> {
  await sleep(1100);
  const i = (await w.ec2.send(new RunInstancesCommand({ ImageId: w.imageId, InstanceType: 't3.micro', MinCount: 1, MaxCount: 1, SubnetId: subnetId }))).Instances![0]!;
  return { id: i.InstanceId!, primaryEni: i.NetworkInterfaces!.find((n) => n.Attachment?.DeviceIndex === 0)!.NetworkInterfaceId! };
}

let scenario = 0;

/** Fresh resources (their own tag), all held by a predecessor launched now. */
export async function predecessorHoldingEverything(w: AwsWorld, subnetId: string): Promise<NatResources & { old: NatInstance }> {
  const tag = `nat-${++scenario}-${process.pid}`;
  const vpc = (await w.ec2.send(new CreateVpcCommand({ CidrBlock: '10.30.0.0/16' }))).Vpc!.VpcId!;
  const tableId = (
    await w.ec2.send(new CreateRouteTableCommand({ VpcId: vpc, TagSpecifications: [{ ResourceType: 'route-table', Tags: [{ Key: 'zdt:nat', Value: tag }] }] }))
  ).RouteTable!.RouteTableId!;
  const allocationId = (
    await w.ec2.send(new AllocateAddressCommand({ Domain: 'vpc', TagSpecifications: [{ ResourceType: 'elastic-ip', Tags: [{ Key: 'zdt:nat', Value: tag }] }] }))
  ).AllocationId!;
  const eniId = (await w.ec2.send(new CreateNetworkInterfaceCommand({ SubnetId: subnetId }))).NetworkInterface!.NetworkInterfaceId!;
  const old = await launchNat(w, subnetId);
  await w.ec2.send(new AttachNetworkInterfaceCommand({ NetworkInterfaceId: eniId, InstanceId: old.id, DeviceIndex: 1 }));
  await w.ec2.send(new AssociateAddressCommand({ AllocationId: allocationId, InstanceId: old.id }));
  await w.ec2.send(new CreateRouteCommand({ RouteTableId: tableId, DestinationCidrBlock: '0.0.0.0/0', NetworkInterfaceId: old.primaryEni }));
  return { tag, subnetId, allocationId, eniId, tableId, old };
}

/** Where each thing points now: the instance holding the Elastic IP, the ENI, and each route. */
export async function whereNatPoints(w: AwsWorld, r: NatResources): Promise<{ eip?: string; eni?: string; defaultRoute?: string; otherRoute?: string }> {
  const [addresses, enis, tables] = await Promise.all([
    w.ec2.send(new DescribeAddressesCommand({ AllocationIds: [r.allocationId] })),
    w.ec2.send(new DescribeNetworkInterfacesCommand({})),
    w.ec2.send(new DescribeRouteTablesCommand({ RouteTableIds: [r.tableId] })),
  ]);
  const addr = addresses.Addresses![0]!;
  const all = enis.NetworkInterfaces ?? [];
  const owner = (eniId: string | undefined) => all.find((n) => n.NetworkInterfaceId === eniId)?.Attachment?.InstanceId;
  const route = (cidr: string) => {
    const x = tables.RouteTables![0]!.Routes?.find((y) => y.DestinationCidrBlock === cidr);
    return x ? x.InstanceId || owner(x.NetworkInterfaceId) : undefined;
  };
  return {
    eip: addr.InstanceId || owner(addr.NetworkInterfaceId),
    eni: owner(r.eniId),
    defaultRoute: route('0.0.0.0/0'),
    otherRoute: route('10.99.0.0/16'),
  };
}
